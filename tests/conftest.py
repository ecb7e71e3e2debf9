"""Shared fixtures: offline hub, the torch_npu contract double, tiny model paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

NPU_DOUBLE_DIR = Path(__file__).parent / "npu_double"


def _forget_npu() -> None:
    from diffusers_npu import devices

    for name in [m for m in sys.modules if m == "torch_npu" or m.startswith("torch_npu.")]:
        del sys.modules[name]
    if hasattr(torch, "npu"):
        delattr(torch, "npu")
    devices.is_npu_available.cache_clear()
    devices.get_device.cache_clear()


@pytest.fixture
def npu_double(monkeypatch):
    """Make ``torch_npu`` importable as the contract double (tests/npu_double); undone afterwards.

    accelerate is pinned to CPU while it is active: the double has no ``npu`` device type.
    """
    _forget_npu()
    monkeypatch.syspath_prepend(str(NPU_DOUBLE_DIR))
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    import torch_npu

    yield torch_npu
    _forget_npu()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one process-wide AcceleratorState; a test that built an Accelerator (fp16, NPU double)
    must not decide the settings of the next in-process run."""
    yield
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def shapes_small(tmp_path_factory) -> Path:
    """4 generated 32x32 captioned shapes (an imagefolder with metadata.jsonl), for tests outside training/."""
    from diffusers_npu.training.data import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", num_images=4, resolution=32)
