"""diffusers-npu: Stable Diffusion / SDXL / FLUX training and inference recipes for Ascend NPU, CUDA and CPU.

Built on unmodified diffusers, accelerate, transformers, peft and datasets. Importing this package never
imports torch_npu; ``diffusers_npu.devices`` does so lazily, guarded, and only where one is installed.
"""

__version__ = "0.1.0"

from .logs import install_import_filters as _install_import_filters

_install_import_filters()
