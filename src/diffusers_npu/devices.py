"""Device backends in one place: detection, precision, loss scaling, sync, seeds, memory.

This is the only module that names ``torch_npu``, ``torch.npu`` or ``torch.cuda`` (a test greps
for it). Everything else receives a :class:`Device` and calls its methods; device kinds elsewhere are plain
strings (``"npu"``, ``"cuda"``, ``"cpu"``) used as data.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import platform
from dataclasses import dataclass
from types import ModuleType

import torch

from .errors import MissingExtraError, UserError

DEVICE_ENV = "DIFFUSERS_NPU_DEVICE"
KINDS = ("npu", "cuda", "cpu")
DTYPES = {"fp32": torch.float32, "no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Which reduced precisions each kind can compute in. fp16 on CPU is refused rather than run: CPU fp16
# kernels are slow and partial, and a silent fallback would hide it (diffusers' safe-defaults philosophy).
_REDUCED_DTYPES = {
    "cpu": {torch.bfloat16},
    "cuda": {torch.float16, torch.bfloat16},
    "npu": {torch.float16, torch.bfloat16},
}


@functools.cache
def is_npu_available(check_device: bool = False) -> bool:
    """True if torch_npu imports (and, with ``check_device``, an NPU answers). Never raises.

    ``find_spec`` first so a machine without torch_npu never imports it; the import is guarded because
    torch_npu installed without the CANN toolkit raises ImportError (libhccl.so), as accelerate's
    ``is_npu_available`` notes (accelerate/utils/imports.py).
    """
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch_npu  # noqa: F401
    except Exception:
        return False
    if not check_device:
        return hasattr(torch, "npu")
    try:
        return torch.npu.is_available()
    except Exception:
        return False


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def detect_kind(requested: str | None = None) -> str:
    """Pick the device kind: ``requested`` or $DIFFUSERS_NPU_DEVICE, else npu > cuda > cpu.

    NPU comes before CUDA for the same reason as in accelerate's ``state.py``: a torch_npu install is a
    deliberate choice, while a CUDA runtime may be present on an Ascend host only incidentally.
    """
    requested = requested or os.environ.get(DEVICE_ENV) or None
    if requested is not None:
        kind = requested.split(":")[0]
        if kind not in KINDS:
            raise UserError(f"unknown device {requested!r}; use one of {', '.join(KINDS)} (--device or ${DEVICE_ENV})")
        if kind == "npu" and not is_npu_available(check_device=True):
            raise UserError(
                "device npu requested but torch_npu has no NPU here; install CANN + torch_npu or use --device cpu"
            )
        if kind == "cuda" and not _cuda_available():
            raise UserError("device cuda requested but no CUDA GPU is visible; use --device cpu")
        return kind
    if is_npu_available(check_device=True):
        return "npu"
    if _cuda_available():
        return "cuda"
    return "cpu"


def npu_ops(needed_by: str = "this") -> ModuleType:
    """The torch_npu module, for NPU kernels and optimizers; raises a one-line install hint if absent."""
    if not is_npu_available():
        version = torch.__version__.split("+")[0]
        raise MissingExtraError(
            f"{needed_by} needs torch_npu: pip install torch-npu=={version} (with the CANN toolkit)"
        )
    return importlib.import_module("torch_npu")


def _device_module(kind: str) -> ModuleType:
    # torch.cuda, or the torch.npu that torch_npu installs at import; the same calls on both.
    return getattr(torch, kind)


def _noop(*_args, **_kwargs) -> None:
    return None


# Operations as tables keyed by kind (the diffusers BACKEND_* idea); accelerators share one code path
# through their ``torch.<kind>`` module, the CPU entry is explicit.
_SYNCHRONIZE = {"cpu": _noop}
_MANUAL_SEED = {"cpu": _noop}  # torch.manual_seed already seeds the CPU generator
_EMPTY_CACHE = {"cpu": _noop}
_PEAK_MEMORY_BYTES = {"cpu": lambda: 0}
_RESET_PEAK = {"cpu": _noop}


def _configure_npu_runtime() -> None:
    """Settings the reference applies at import of every NPU script (seed README; diffusers examples).

    ``allow_internal_format=False`` keeps tensors in ND format so checkpoint tensors are plain layouts.
    """
    torch.npu.config.allow_internal_format = False


_RUNTIME_SETUP = {"npu": _configure_npu_runtime}


@dataclass(frozen=True)
class Device:
    """One compute device and everything device-specific the package needs. Build with :func:`get_device`."""

    kind: str
    index: int | None = None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.kind if self.index is None else f"{self.kind}:{self.index}")

    def check_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """Return ``dtype`` if this device can compute in it, else raise a one-line UserError."""
        if dtype == torch.float32 or dtype in _REDUCED_DTYPES[self.kind]:
            if dtype == torch.bfloat16 and self.kind == "cuda" and not torch.cuda.is_bf16_supported():
                raise UserError("bf16 is not supported by this GPU; use --mixed_precision fp16 or no")
            return dtype
        name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
        ok = ", ".join(sorted(k for k, v in DTYPES.items() if v in _REDUCED_DTYPES[self.kind] and k != "no"))
        raise UserError(f"{name} is not supported on {self.kind}; use fp32 (mixed precision 'no') or {ok or 'fp32'}")

    def autocast(self, dtype: torch.dtype) -> contextlib.AbstractContextManager:
        """Autocast to ``dtype`` on this device; a no-op context for fp32."""
        if self.check_dtype(dtype) == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.kind, dtype=dtype)

    def grad_scaler(self, enabled: bool = True, static: bool = False, init_scale: float = 2.0**16):
        """The loss scaler for fp16 training, chosen here and only here.

        ``static=True`` is the reference's ``GradScalerKwargs(dynamic=False)``: a fixed loss scale that never
        skips a step. Only torch_npu's ``torch.npu.amp.GradScaler(dynamic=False)`` offers it (torch_npu
        npu/amp/grad_scaler.py), so elsewhere it is an error rather than a silent dynamic scaler.
        ``enabled=False`` gives a scaler whose methods are pass-throughs (nanoGPT's GradScaler idiom).
        """
        if static and self.kind != "npu":
            raise UserError(
                "--loss_scale static needs an NPU (torch_npu's static GradScaler); use --loss_scale dynamic"
            )
        if static:
            return torch.npu.amp.GradScaler(init_scale=init_scale, dynamic=False, enabled=enabled)
        return torch.amp.GradScaler(self.kind, init_scale=init_scale, enabled=enabled)

    def synchronize(self) -> None:
        _SYNCHRONIZE.get(self.kind, lambda: _device_module(self.kind).synchronize())()

    def manual_seed(self, seed: int) -> None:
        """Seed torch's CPU generator and every generator of this device kind."""
        torch.manual_seed(seed)
        _MANUAL_SEED.get(self.kind, lambda s: _device_module(self.kind).manual_seed_all(s))(seed)

    def empty_cache(self) -> None:
        _EMPTY_CACHE.get(self.kind, lambda: _device_module(self.kind).empty_cache())()

    def name(self) -> str:
        """The hardware's name, for benchmark records ("NVIDIA H100 80GB HBM3", "Ascend910B", or the CPU's)."""
        if self.kind == "cpu":
            return platform.processor() or platform.machine()
        return _device_module(self.kind).get_device_name(self.index or 0)

    def peak_memory_gib(self) -> float:
        """Peak memory allocated by torch on this device since the last reset, in GiB (0.0 on CPU)."""
        peak = _PEAK_MEMORY_BYTES.get(self.kind, lambda: _device_module(self.kind).max_memory_allocated())()
        return peak / 2**30

    def reset_peak_memory(self) -> None:
        _RESET_PEAK.get(self.kind, lambda: _device_module(self.kind).reset_peak_memory_stats())()

    @property
    def supports_pin_memory(self) -> bool:
        """Pinned host memory only helps (and only works) when an accelerator copies from it."""
        return self.kind != "cpu"

    def generator(self, seed: int) -> torch.Generator:
        """A seeded generator on this device, for pipelines' ``generator=`` argument."""
        return torch.Generator(self.torch_device).manual_seed(seed)


@functools.cache
def get_device(requested: str | None = None) -> Device:
    """The :class:`Device` for ``requested`` (``"npu"``, ``"cuda:1"``, ...) or the detected one. Built once."""
    requested = requested or os.environ.get(DEVICE_ENV) or None
    kind = detect_kind(requested)
    index = int(requested.split(":")[1]) if requested and ":" in requested else None
    _RUNTIME_SETUP.get(kind, _noop)()
    return Device(kind, index)


def device_count(kind: str) -> int:
    """How many devices of ``kind`` this host has (1 for cpu): the launchers' default process count."""
    return 1 if kind == "cpu" else _device_module(kind).device_count()


def parse_dtype(name: str) -> torch.dtype:
    """``"fp16"|"bf16"|"fp32"|"no"`` to a torch dtype; a one-line error for anything else."""
    if name not in DTYPES:
        raise UserError(f"unknown precision {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def build_accelerator(
    device: Device,
    mixed_precision: str = "no",
    gradient_accumulation_steps: int = 1,
    loss_scale: str = "dynamic",
    init_loss_scale: float = 2.0**16,
    **accelerator_kwargs,
):
    """Build the one ``accelerate.Accelerator`` of a run from this device's precision and scaler decisions.

    accelerate owns autocast, backward and the scaler; the only thing it cannot express is torch_npu's
    static loss scale, so that scaler is made here and handed to it before ``prepare()`` (it then
    round-trips through ``save_state``/``load_state`` as ``scaler.pt``). One scaler, never two.
    """
    from accelerate import Accelerator
    from accelerate.utils import GradScalerKwargs

    device.check_dtype(parse_dtype(mixed_precision))
    if loss_scale not in ("dynamic", "static"):
        raise UserError(f"unknown --loss_scale {loss_scale!r}; use dynamic or static")
    handlers = list(accelerator_kwargs.pop("kwargs_handlers", []))
    if mixed_precision == "fp16" and loss_scale == "dynamic":
        handlers.append(GradScalerKwargs(init_scale=init_loss_scale))
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        cpu=device.kind == "cpu",
        kwargs_handlers=handlers,
        **accelerator_kwargs,
    )
    if mixed_precision == "fp16" and loss_scale == "static":
        accelerator.scaler = device.grad_scaler(static=True, init_scale=init_loss_scale)
    return accelerator


# The optimizer each kind runs fastest: the ModelZoo NPU launchers' fused AdamW, torch's fused AdamW on CUDA.
_DEFAULT_OPTIMIZER = {"npu": "npu_fused_adamw", "cuda": "adamw_fused", "cpu": "adamw"}


@dataclass(frozen=True)
class Settings:
    """What a run on one device kind uses, and a ``note`` per requested setting it could not honour."""

    attention: str
    optimizer: str
    mixed_precision: str
    notes: tuple[str, ...] = ()


def settings_for(
    kind: str, mixed_precision: str = "no", attention: str | None = None, optimizer: str | None = None
) -> Settings:
    """The device defaults, in one place: the launchers (``python -m diffusers_npu.devices``) and bench/ ask here.

    Unset, ``attention`` is ``npu_fa`` on an NPU in fp16/bf16 and ``sdpa`` elsewhere, and ``optimizer`` the kind's
    fused AdamW. A requested setting the kind cannot run (fp16 on CPU, ``npu_fa`` off an NPU, an optimizer built
    for another device) is replaced by the default and said in ``notes``: never silently.
    """
    from . import attention as kernels
    from . import optim

    notes = []
    if DTYPES.get(mixed_precision, torch.float32) not in {torch.float32, *_REDUCED_DTYPES[kind]}:
        notes.append(f"{kind} cannot train in {mixed_precision}: --mixed_precision no")
        mixed_precision = "no"
    dtype = DTYPES[mixed_precision]
    default_attention = "npu_fa" if kind == "npu" and dtype != torch.float32 else "sdpa"
    spec = kernels.KERNELS.get(attention) if attention else None
    if attention and (spec is None or kind not in spec.devices or dtype not in spec.dtypes):
        notes.append(
            f"{kind} cannot run --attention {attention} in {mixed_precision}: --attention {default_attention}"
        )
        attention = None
    spec = optim.OPTIMIZERS.get(optimizer) if optimizer else None
    if optimizer and (spec is None or kind not in spec.devices):
        notes.append(f"{kind} cannot run --optimizer {optimizer}: --optimizer {_DEFAULT_OPTIMIZER[kind]}")
        optimizer = None
    return Settings(
        attention or default_attention, optimizer or _DEFAULT_OPTIMIZER[kind], mixed_precision, tuple(notes)
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m diffusers_npu.devices [--mixed_precision M] [--attention A] [--optimizer O]``: one line,
    ``<kind> <count> <attention> <optimizer> <mixed_precision>`` (read by test/_common.sh); notes on stderr."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m diffusers_npu.devices", description=main.__doc__)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--attention", default=None)
    parser.add_argument("--optimizer", default=None)
    args = parser.parse_args(argv)
    kind = detect_kind()
    chosen = settings_for(kind, args.mixed_precision, args.attention, args.optimizer)
    for note in chosen.notes:
        print(f"note: {note}", file=sys.stderr)
    print(kind, device_count(kind), chosen.attention, chosen.optimizer, chosen.mixed_precision)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
