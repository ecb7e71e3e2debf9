"""What a long run meets and how it answers: divergence, preemption, a second run on the same folder, a resume
with changed settings. (A full disk is checkpoint.py's, at the write.) The loop calls these; each failure is one
line and a non-zero exit, and never leaves a checkpoint or final weights with a non-finite tensor.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import torch

from ..errors import UserError

# Settings that may differ when a run is resumed: schedule length, logging, validation and output bookkeeping.
# Everything else (model, recipe, batch, resolution, precision, data, LoRA shape, ...) must match the checkpoint.
CHANGEABLE = frozenset({
    "learning_rate", "max_train_steps", "num_train_epochs", "checkpointing_steps", "checkpoints_total_limit",
    "resume_from_checkpoint", "allow_changed_settings", "max_skipped_steps", "output_dir", "logging_steps",
    "logging_dir", "report_to", "timing_warmup_steps", "dataloader_num_workers", "pin_memory", "persistent_workers",
    "validation_prompt", "validation_prompts", "validation_negative_prompt", "validation_epochs", "validation_steps",
    "num_validation_images", "validation_seed", "validation_inference_steps", "cache_dir", "latent_cache_dir",
    "device", "torch_compile",
})  # fmt: skip


class Diverged(UserError):
    """Training produced a non-finite loss or weights; the run stops before saving anything of it."""


def settings(cfg, recipe_name: str) -> dict:
    """The settings a checkpoint records (JSON-safe), compared by :func:`changed_settings` on resume."""
    values = {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in vars(cfg).items()}
    return {**values, "recipe": recipe_name}


def changed_settings(saved: dict, now: dict) -> list[str]:
    """``name saved -> now`` for every setting that differs and may not change (see CHANGEABLE)."""
    return [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
            if k not in CHANGEABLE and saved.get(k) != now.get(k)]  # fmt: skip


def check_resume_settings(manifest: dict, now: dict, path: Path, allowed: bool) -> None:
    saved = manifest.get("settings")
    if saved is None or allowed:
        return
    diff = changed_settings(saved, now)
    if diff:
        raise UserError(f"checkpoint {path} was written with other settings: {'; '.join(diff)}; resume with the "
                        "same flags, or pass --allow_changed_settings to continue anyway")  # fmt: skip


def nonfinite_parameters(params: list[torch.nn.Parameter]) -> int:
    """How many trained tensors hold NaN or inf (one host sync for all of them)."""
    flags = torch.stack([~torch.isfinite(p.detach()).all() for p in params])
    return int(flags.sum())


class OutputLock:
    """One run per output folder: ``OUTPUT_DIR/.lock`` held with ``flock`` for the run (the kernel drops it when
    the process dies, so a killed run never blocks the next), holding the owner's pid for the message."""

    def __init__(self, out: Path):
        self.path, self.fd = out / ".lock", None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"--output_dir {self.path.parent} is in use by another run (pid {owner}); wait for it "
                            "to finish or choose another --output_dir") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (its content is only a hint)
            self.fd = None


class Preemption:
    """SIGTERM / SIGINT: the first asks the run to finish its optimizer step, checkpoint and exit (143 / 130, the
    shell's codes for those signals); a second exits at once. Schedulers (SLURM, Kubernetes) send SIGTERM first."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, _frame) -> None:
        if self.received is not None:  # the second signal: no more waiting
            os._exit(128 + signum)
        self.received = signum

    def requested(self, accelerator) -> int | None:
        """The signal number if any process received one (every process agrees: one all-reduce when there are
        several), else None."""
        if accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor([self.received or 0], device=accelerator.device)
        agreed = int(accelerator.reduce(flag, reduction="max").item())
        return agreed or None

    @staticmethod
    def exit_code(signum: int) -> int:
        return 128 + signum


def step_ok(loss: float, skipped_in_a_row: int, max_skipped: int, scaler_active: bool) -> bool:
    """Whether training may go on after a step: a finite loss, or fp16's loss scaler skipping an overflowed step,
    tolerated ``max_skipped`` times in a row. Host arithmetic only (the loss is already on the host)."""
    return skipped_in_a_row <= max_skipped and (math.isfinite(loss) or scaler_active)


def diverged(loss: float, step: int, skipped_in_a_row: int, last_good: str) -> Diverged:
    what = f"loss {loss}" if not math.isfinite(loss) else f"{skipped_in_a_row} fp16 overflow skips in a row"
    return Diverged(f"training diverged at step {step} ({what}); nothing of it was saved, the last good checkpoint "
                    f"is {last_good}: lower --learning_rate, keep --max_grad_norm on, or raise --max_skipped_steps")  # fmt: skip
