"""Contract double of ``torch_npu`` for CPU tests: the documented API, implemented in plain torch.

Never shipped: it lives under tests/ and is put on ``sys.path`` by the ``npu_double`` fixture, so
``importlib.util.find_spec("torch_npu")`` finds a real ModuleSpec and ``import torch_npu`` loads this file.
Like the real package it installs ``torch.npu`` (torch_npu/__init__.py registers the ``npu`` module).

Deviations from real torch_npu, all deliberate:
- tensors stay on the CPU; there is no ``npu`` device type, so ``torch.device("npu")`` does not parse;
- ``npu_fusion_attention`` computes in fp32 with an exact softmax (the kernel is tiled, with fp32 accumulation);
  it supports layouts BNSD/BSND/BSH/SBH, ``atten_mask`` (bool/uint8, True = masked), ``pse`` added before
  ``scale`` (pse_type 1), ``keep_prob`` < 1 is refused (no dropout Philox state), sparse modes other than 0
  are refused; outputs 2-7 are placeholders of the documented types;
- memory statistics are always 0; ``synchronize`` does nothing.
"""

from __future__ import annotations

import torch

from . import npu, optim  # noqa: F401  (optim: torch_npu.optim.NpuFusedAdamW)
from ._attention import npu_fusion_attention  # noqa: F401

torch.npu = npu
__version__ = "0.0.0+contract-double"
