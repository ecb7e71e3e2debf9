"""``torch.npu`` as torch_npu installs it: device functions, ``config``, ``amp``. CPU-backed (see package doc)."""

from __future__ import annotations

import types

import torch

from . import amp  # noqa: F401

config = types.SimpleNamespace(allow_internal_format=True)


def is_available() -> bool:
    return True


def device_count() -> int:
    return 1


def current_device() -> int:
    return 0


def is_bf16_supported() -> bool:
    return True


def synchronize(device=None) -> None:
    return None


def manual_seed_all(seed: int) -> None:
    torch.manual_seed(seed)


def manual_seed(seed: int) -> None:
    torch.manual_seed(seed)


def max_memory_allocated(device=None) -> int:
    return 0


def reset_peak_memory_stats(device=None) -> None:
    return None


def empty_cache() -> None:
    return None
