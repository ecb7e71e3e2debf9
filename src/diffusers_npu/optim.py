"""Optimizer registry (CLI word -> spec) and the one fused clip-grad-norm.

Imports of optional optimizers are lazy; a missing one raises a one-line error naming the pip extra or the
install step. torch_npu entries are loaded through ``devices.npu_ops()``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from . import devices
from .errors import MissingExtraError, UserError

_EMPTY: Mapping[str, object] = MappingProxyType({})
# ``source`` prefix for classes inside the NPU ops module (``devices.npu_ops()``), which only devices imports.
NPU_OPS = "npu_ops"


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: where its class lives (``module:attr``, or ``npu_ops:attr.path``), the devices it runs on,
    how to install it."""

    name: str
    source: str
    devices: frozenset[str]
    install_hint: str = ""
    defaults: Mapping[str, object] = field(default_factory=lambda: _EMPTY)
    # NpuFusedAdamW keeps combined grad buffers and raises on set_to_none=True (npu_fused_optim_base.py
    # L127-142), while accelerate's zero_grad() passes set_to_none=True unless told otherwise.
    zero_grad_kwargs: Mapping[str, object] = field(default_factory=lambda: _EMPTY)

    def load(self) -> type[torch.optim.Optimizer]:
        """Import the optimizer class; raise MissingExtraError with the install hint if it is absent."""
        module, attr = self.source.split(":")
        if module == NPU_OPS:  # an attribute path inside the NPU ops module, reached only through devices
            found = devices.npu_ops(f"--optimizer {self.name}")
            for part in attr.split("."):
                found = getattr(found, part)
            return found
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as err:
            raise MissingExtraError(self.install_hint) from err


# Probe by signature, not version (nanoGPT model.py: 'fused' in inspect.signature(AdamW).parameters).
_HAS_FUSED = "fused" in inspect.signature(torch.optim.AdamW).parameters
_ANY = frozenset({"cpu", "cuda", "npu"})

OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("adamw", "torch.optim:AdamW", _ANY, defaults=MappingProxyType({"foreach": True})),
        OptimizerSpec("adamw_fused", "torch.optim:AdamW", frozenset({"cpu", "cuda"}),
                      "--optimizer adamw_fused needs a torch whose AdamW has fused=True; use --optimizer adamw",
                      MappingProxyType({"fused": True})),
        OptimizerSpec("npu_fused_adamw", f"{NPU_OPS}:optim.NpuFusedAdamW", frozenset({"npu"}),
                      zero_grad_kwargs=MappingProxyType({"set_to_none": False})),
        OptimizerSpec("megatron_adamw", "megatron_npu.adaptor_optimizer_optimizer:AdamW", frozenset({"npu"}),
                      "--optimizer megatron_adamw needs megatron_npu (Ascend Megatron-LM, not on PyPI): "
                      "install it from https://gitee.com/ascend/Megatron-LM"),
        OptimizerSpec("apex_fused_adam", "apex.optimizers:FusedAdam", frozenset({"cuda", "npu"}),
                      "--optimizer apex_fused_adam needs NVIDIA apex built from source "
                      "(https://github.com/NVIDIA/apex#installation); PyPI's 'apex' is an unrelated package",
                      MappingProxyType({"adam_w_mode": True})),
        OptimizerSpec("adamw_8bit", "bitsandbytes.optim:AdamW8bit", frozenset({"cuda"}),
                      "--optimizer adamw_8bit needs bitsandbytes: pip install diffusers_npu[bnb]"),
    )
}  # fmt: skip


def get_spec(name: str) -> OptimizerSpec:
    if name not in OPTIMIZERS:
        raise UserError(f"unknown --optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter] | Iterable[dict],
    device_kind: str,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 1e-2,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params``; raises UserError/MissingExtraError naming the fix."""
    spec = get_spec(name)
    cls = spec.load()  # a missing package is reported before a device mismatch: it is the first fix
    if device_kind not in spec.devices:
        raise UserError(
            f"--optimizer {name} runs on {'/'.join(sorted(spec.devices))}, not {device_kind}; use --optimizer adamw"
        )
    if spec.defaults.get("fused") and not _HAS_FUSED:
        raise UserError(spec.install_hint)
    return cls(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, **spec.defaults)


def clip_grad_norm(
    parameters: Iterable[torch.nn.Parameter],
    max_norm: float,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    fused: bool = False,
) -> torch.Tensor:
    """Clip gradients to ``max_norm`` (L2) and return the total norm before clipping.

    A GradScaler's gradients are unscaled first: the reference called ``clip_grad_norm_fused_`` on scaled
    gradients (seed train_text_to_image.py L1039-1043), so its threshold applied to ``loss_scale * grad``.
    ``fused`` uses the optimizer's ``clip_grad_norm_fused_`` (torch_npu fused optimizers) when it has one,
    else torch's foreach ``clip_grad_norm_``. ``optimizer`` may be accelerate's wrapper.
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    if scaler is not None and scaler.is_enabled():
        scaler.unscale_(inner)
    if fused and hasattr(inner, "clip_grad_norm_fused_"):
        return inner.clip_grad_norm_fused_(max_norm)
    return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm, foreach=True)
