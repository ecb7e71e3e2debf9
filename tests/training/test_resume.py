"""Checkpoints: a run SIGKILLed after a checkpoint and resumed ends bit-identical to an uninterrupted run;
pruning keeps the newest; a truncated checkpoint is refused before anything is written."""

from __future__ import annotations

import signal

import pytest
import torch
from safetensors.torch import load_file

from .helpers import train

# Mid-epoch kill (8 images / batch 2 = 4 steps per epoch; killed after step 3, so resume skips 3 batches of
# epoch 0), with everything that carries state: EMA, random flips (global RNG), LR warm-up, shuffling.
FLAGS = (
    "--use_ema",
    "--random_flip",
    "--lr_scheduler",
    "cosine",
    "--lr_warmup_steps",
    "2",
    "--checkpointing_steps",
    "3",
)
STEPS = 6


def unet_weights(out) -> dict[str, torch.Tensor]:
    return load_file(out / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path, shapes):
    train("train_text_to_image.py", tmp_path / "straight", shapes, *FLAGS, steps=STEPS)
    killed = train("train_text_to_image.py", tmp_path / "resumed", shapes, *FLAGS, steps=STEPS, check=False,
                   kill_after_checkpoint=3)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (tmp_path / "resumed" / "checkpoint-3").is_dir() and not (tmp_path / "resumed" / "unet").exists()
    train(
        "train_text_to_image.py",
        tmp_path / "resumed",
        shapes,
        *FLAGS,
        "--resume_from_checkpoint",
        "latest",
        steps=STEPS,
    )
    straight, resumed = unet_weights(tmp_path / "straight"), unet_weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    different = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"


@pytest.mark.slow
def test_checkpoints_are_pruned_and_truncated_ones_refused(tmp_path, shapes):
    out = tmp_path / "out"
    train(
        "train_text_to_image.py", out, shapes, "--checkpointing_steps", "1", "--checkpoints_total_limit", "2", steps=3
    )
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert not list(out.glob(".checkpoint-*"))  # no temporary directory left behind
    weights = out / "checkpoint-3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a full disk
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    proc = train("train_text_to_image.py", out, shapes, "--resume_from_checkpoint", "latest", steps=4, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "truncated" in errors[0], proc.stderr[-2000:]
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}, "nothing may be rewritten"


@pytest.mark.slow
def test_lora_checkpoints_hold_only_the_adapter_and_resume_bit_identically(tmp_path, shapes):
    from safetensors import safe_open

    flags = ("--random_flip", "--lr_scheduler", "cosine", "--lr_warmup_steps", "2", "--checkpointing_steps", "3",
             "--rank", "4")  # fmt: skip
    script = "train_text_to_image_lora.py"
    train(script, tmp_path / "straight", shapes, *flags, steps=STEPS)
    killed = train(script, tmp_path / "resumed", shapes, *flags, steps=STEPS, check=False,
                   kill_after_checkpoint=3)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with safe_open(tmp_path / "resumed" / "checkpoint-3" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(".lora_" in k for k in keys), "a LoRA checkpoint must not carry the frozen base weights"
    train(script, tmp_path / "resumed", shapes, *flags, "--resume_from_checkpoint", "latest", steps=STEPS)
    straight = load_file(tmp_path / "straight" / "pytorch_lora_weights.safetensors")
    resumed = load_file(tmp_path / "resumed" / "pytorch_lora_weights.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
