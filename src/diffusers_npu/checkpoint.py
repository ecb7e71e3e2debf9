"""Atomic checkpoints: written to a temporary directory and renamed into place, never over the last good one.

A checkpoint is ``<output_dir>/checkpoint-<step>/``: accelerate's ``save_state`` files plus ``checkpoint.json``
(written last) that records the step and every file's size, so a truncated copy is detected before loading.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from .errors import UserError, first_line

MANIFEST = "checkpoint.json"
PREFIX = "checkpoint-"
TRAINABLE_ONLY = "trainable_only"  # manifest key: the model files hold the trainable parameters only


def _manifest(directory: Path, step: int, extra: dict) -> dict:
    files = {
        p.relative_to(directory).as_posix(): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()
    }
    return {"step": step, "files": files, **extra}


def replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``. An existing ``final`` is set aside first and removed only afterwards."""
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def temp_dir_beside(final: Path) -> Path:
    """A fresh hidden directory next to ``final`` (same filesystem, so the rename is atomic)."""
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(accelerator, output_dir: Path, step: int, extra: dict | None = None,
                    export: Callable[[Path], None] | None = None) -> Path:  # fmt: skip
    """Save accelerate's full state for ``step`` into a temporary directory, then publish it atomically.

    Every process takes part (accelerate writes per-rank RNG states); ``export(directory)`` (the model in
    diffusers' layout), the manifest and the rename happen on the main process, between barriers, so no rank
    ever sees a half-written checkpoint.
    """
    final = output_dir / f"{PREFIX}{step}"
    tmp = output_dir / f".{final.name}.tmp"
    previous = list_checkpoints(output_dir)
    last_good = previous[-1].name if previous else "none"
    if previous:  # the next checkpoint is about as large as the last one (every rank checks: none waits alone)
        need, free = _size(previous[-1]), _free_bytes(output_dir)
        if free < need:
            raise UserError(f"not enough space on {output_dir} for {final.name} ({free / 2**30:.2f} GiB free, "
                            f"{need / 2**30:.2f} GiB needed); the last good one is {last_good}: free space, "
                            "then resume with --resume_from_checkpoint latest")  # fmt: skip
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if export is not None:
                # Outside the saved random state: EMAModel.save_pretrained initialises a model from its config,
                # which draws from the CPU generator; a resumed run must continue the stream the checkpoint recorded.
                with torch.random.fork_rng(devices=[]):
                    export(tmp)
            (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp, step, extra or {}), indent=1))
            replace_dir(tmp, final)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"no space left on {output_dir} writing {final.name}; the last good one is {last_good}: "
                        "free space, then resume with --resume_from_checkpoint latest") from None  # fmt: skip
    accelerator.wait_for_everyone()
    return final


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def load_checkpoint(accelerator, path: Path, trainable_only: bool) -> dict:
    """Verify checkpoint ``path`` (one-line error if missing or truncated), restore it, return its manifest.

    ``trainable_only``: whether this run saves only trainable parameters (LoRA); a checkpoint of the other kind
    (a full fine-tune's with a LoRA script, or the reverse) is refused, and so is one that does not restore.
    """
    manifest = verify_checkpoint(path)
    if bool(manifest.get(TRAINABLE_ONLY, False)) != trainable_only:
        written = "a LoRA run (adapters only)" if manifest.get(TRAINABLE_ONLY) else "a full fine-tune"
        raise UserError(f"checkpoint {path} was written by {written}; resume it with the script that wrote it")
    try:  # a trainable-only checkpoint restores the trained parameters; the frozen rest is already loaded
        accelerator.load_state(str(path), strict=not trainable_only)
    except Exception as err:  # torch, safetensors and pickle raise many types for foreign or damaged files
        first = first_line(err)
        raise UserError(f"checkpoint {path} does not restore into this run ({first}); it is damaged or from "
                        "another model or settings: resume from another checkpoint or start afresh") from None  # fmt: skip
    return manifest


def save_trainable_only(accelerator) -> None:
    """From now on ``save_state`` writes only parameters that require grad, for models with a frozen part
    (LoRA): the frozen weights come from the pretrained model at every start, so a FLUX LoRA checkpoint is
    megabytes instead of the whole transformer. Record ``{TRAINABLE_ONLY: True}`` in the manifest."""

    def drop_frozen(models, weights, _output_dir) -> None:
        for model, state in zip(models, weights):
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            for key in [k for k in state if k not in trainable]:
                del state[key]

    accelerator.register_save_state_pre_hook(drop_frozen)


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (with a manifest) in ``output_dir``, oldest step first."""
    found = [p for p in output_dir.glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX) :].isdigit()]
    return sorted((p for p in found if (p / MANIFEST).is_file()), key=step_of)


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX) :])


def prune_checkpoints(output_dir: Path, keep: int | None, step: int) -> list[Path]:
    """After checkpoint ``step`` was written: delete the oldest complete checkpoints so that ``keep`` remain,
    counting it, as diffusers' ``--checkpoints_total_limit``. A checkpoint of a later step than ``step`` comes
    from another run in the same folder and is never deleted. Returns what was removed."""
    if not keep:
        return []
    doomed = [p for p in list_checkpoints(output_dir) if step_of(p) <= step][:-keep]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def verify_checkpoint(path: Path) -> dict:
    """Return the manifest of checkpoint ``path`` or raise a one-line UserError if it is missing or truncated."""
    hint = "resume from another checkpoint (--resume_from_checkpoint PATH) or start without --resume_from_checkpoint"
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist; {hint}")
    if not manifest_path.is_file():
        raise UserError(f"checkpoint {path} is incomplete (no {MANIFEST}); {hint}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"checkpoint {path} has a corrupt {MANIFEST} ({err}); {hint}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or "step" not in manifest:
        raise UserError(f"checkpoint {path} has a corrupt {MANIFEST} (not a step and file list); {hint}")
    for name, size in manifest["files"].items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            raise UserError(f"checkpoint {path} is truncated ({name} is missing or has the wrong size); {hint}")
    return manifest


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    """``--resume_from_checkpoint``: ``latest`` (None if there is none yet), or a path / checkpoint name."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    return path if path.is_absolute() or path.exists() else output_dir / resume
