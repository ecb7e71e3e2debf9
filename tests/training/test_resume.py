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

    def files() -> dict:  # the lock file is rewritten (with the pid) by every run that starts, by design
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}

    before = files()
    proc = train("train_text_to_image.py", out, shapes, "--resume_from_checkpoint", "latest", steps=4, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "truncated" in errors[0], proc.stderr[-2000:]
    assert before == files(), "nothing may be rewritten"


@pytest.mark.slow
@pytest.mark.parametrize("script,extra", [
    ("train_text_to_image_lora.py", ()),
    ("train_text_to_image_lora_sdxl.py", ("--train_text_encoder", "--proportion_empty_prompts", "0.5")),
])  # fmt: skip
def test_lora_checkpoints_hold_only_the_adapter_and_resume_bit_identically(tmp_path, shapes, script, extra):
    from safetensors import safe_open

    flags = ("--random_flip", "--lr_scheduler", "cosine", "--lr_warmup_steps", "2", "--checkpointing_steps", "3",
             "--rank", "4", *extra)  # fmt: skip
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


@pytest.mark.slow
def test_checkpoints_hold_diffusers_folders_and_resume_by_name(tmp_path, shapes):
    """checkpoint-N/unet and unet_ema load as diffusers' README says and hold the trained weights; a checkpoint
    name relative to --output_dir resumes; a checkpoint of a later step from another run is never pruned."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from .helpers import SUMMARY, tiny_path

    out = tmp_path / "out"
    (out / "checkpoint-500").mkdir(parents=True)  # another run's, complete
    (out / "checkpoint-500" / "checkpoint.json").write_text('{"step": 500, "files": {}}')
    flags = ("--use_ema", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2")
    proc = train("train_text_to_image.py", out, shapes, *flags, steps=3)
    assert "checkpoint-500 from another run" in proc.stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3", "checkpoint-500"]
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="checkpoint-3/unet")
    accelerate_copy = load_file(out / "checkpoint-3" / "model.safetensors")
    assert all(torch.equal(v, accelerate_copy[k]) for k, v in unet.state_dict().items())
    ema = UNet2DConditionModel.from_pretrained(out, subfolder="checkpoint-3/unet_ema")
    final = unet_weights(out)  # the final save holds the EMA weights
    assert all(torch.equal(v, final[k]) for k, v in ema.state_dict().items())
    assert not all(torch.equal(v, final[k]) for k, v in unet.state_dict().items())
    pipe = StableDiffusionPipeline.from_pretrained(tiny_path("sd15"), unet=unet)
    image = pipe("a red circle", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    proc = train("train_text_to_image.py", out, shapes, *flags, "--resume_from_checkpoint", "checkpoint-2", steps=4)
    assert int(SUMMARY.search(proc.stdout).group(7)) == 2  # steps 3 and 4


@pytest.mark.slow
def test_lora_checkpoints_hold_the_lora_file_with_its_config(tmp_path, shapes):
    from diffusers import StableDiffusionPipeline

    from .helpers import tiny_path

    out = tmp_path / "out"
    train("train_text_to_image_lora.py", out, shapes, "--rank", "4", "--lora_alpha", "8", "--checkpointing_steps", "2")
    file = out / "checkpoint-2" / "pytorch_lora_weights.safetensors"
    assert load_file(file).keys() == load_file(out / "pytorch_lora_weights.safetensors").keys()
    _, _, metadata = StableDiffusionPipeline.lora_state_dict(str(file.parent), return_lora_metadata=True)
    assert metadata["unet.r"] == 4 and metadata["unet.lora_alpha"] == 8, metadata
    assert StableDiffusionPipeline.from_pretrained(tiny_path("sd15")).load_lora_weights(str(file.parent)) is None
