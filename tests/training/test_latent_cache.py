"""--cache_latents_to_disk: a second run reuses the cache (the encoders do not run), a changed image is encoded
again, a truncated shard is rebuilt and never used, and a SIGKILLed run resumes bit-identically from the cache."""

from __future__ import annotations

import shutil
import signal

import pytest
import torch
from PIL import Image

from .helpers import train


def _run(tmp_path, data, cache, name, monkeypatch, *extra):
    """One in-process SD run on the disk cache; returns how many examples the encoders saw."""
    from diffusers_npu.training import args, loop
    from diffusers_npu.training.recipes.sd import SDRecipe

    calls = []
    encode = SDRecipe.encode_batch
    monkeypatch.setattr(SDRecipe, "encode_batch", lambda self, b: calls.append(len(b["captions"])) or encode(self, b))
    argv = ["--train_data_dir", str(data), "--output_dir", str(tmp_path / name), "--resolution", "32",
            "--train_batch_size", "2", "--max_train_steps", "2", "--checkpointing_steps", "1000",
            "--cache_latents_to_disk", "--latent_cache_dir", str(cache), *extra]  # fmt: skip
    cfg = args.parse_recipe_args(SDRecipe, "test", "tiny:sd15", argv)
    loop.run(SDRecipe(cfg), cfg)
    monkeypatch.undo()
    return sum(calls)


@pytest.mark.slow
def test_disk_cache_is_reused_refreshed_and_rebuilt(tmp_path, mixed, monkeypatch, caplog):
    data = tmp_path / "data"
    shutil.copytree(mixed, data)
    cache = tmp_path / "cache"
    assert _run(tmp_path, data, cache, "a", monkeypatch) == 8
    (shard,) = cache.glob("shard-*.safetensors")
    assert _run(tmp_path, data, cache, "b", monkeypatch) == 0, "a second run must not run the encoders"
    Image.new("RGB", (24, 48), (1, 2, 3)).save(data / "img3.png")  # changed content, same name
    assert _run(tmp_path, data, cache, "c", monkeypatch) == 1, "only the changed image is encoded again"
    shard.write_bytes(shard.read_bytes()[:50])  # truncated, as by a crash during a write
    with caplog.at_level("WARNING", logger="diffusers_npu.train"):
        assert _run(tmp_path, data, cache, "d", monkeypatch) == 7  # the 7 unchanged images lived in that shard
    assert any("deleting unreadable shard" in r.getMessage() for r in caplog.records)
    assert not shard.exists() and not list(cache.glob(".*.tmp"))
    assert _run(tmp_path, data, cache, "e", monkeypatch, "--dataset_repeats", "3") == 0  # repeats share keys


@pytest.mark.slow
def test_sigkill_and_resume_from_the_disk_cache_is_bit_identical(tmp_path, mixed):
    from safetensors.torch import load_file

    flags = ("--cache_latents_to_disk", "--latent_cache_dir", str(tmp_path / "cache"), "--checkpointing_steps", "3",
             "--enable_bucket", "--min_bucket_reso", "16", "--max_bucket_reso", "64", "--bucket_reso_steps", "8")  # fmt: skip
    train("train_text_to_image.py", tmp_path / "straight", mixed, *flags, steps=6)
    killed = train("train_text_to_image.py", tmp_path / "resumed", mixed, *flags, steps=6, check=False,
                   kill_after_checkpoint=3)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    proc = train("train_text_to_image.py", tmp_path / "resumed", mixed, *flags, "--resume_from_checkpoint", "latest",
                 steps=6)  # fmt: skip
    assert "encoded 0 of its 8 examples, reused 8" in proc.stderr
    a, b = (load_file(tmp_path / d / "unet" / "diffusion_pytorch_model.safetensors") for d in ("straight", "resumed"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_cache_with_random_flip_is_refused(tmp_path, mixed):
    proc = train("train_text_to_image.py", tmp_path / "out", mixed, "--cache_latents_to_disk", "--random_flip",
                 check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --random_flip cannot be combined")
    assert not (tmp_path / "out" / "latent_cache").exists()


@pytest.mark.slow
def test_encoders_leave_the_device_after_caching_and_return_for_validation(tmp_path, mixed, monkeypatch):
    """Once the cache is built the VAE and text encoder are moved to the CPU (the steps need the UNet only);
    validation moves them to the training device and off again. Recorded as the moves the loop asks for, since
    on this CPU-only machine every device is the CPU."""
    from diffusers_npu.training import args, loop
    from diffusers_npu.training.recipes.sd import SDRecipe

    events = []
    recipe_box = {}
    to = torch.nn.Module.to

    def spy(module, *a, **k):
        recipe = recipe_box.get("recipe")
        if recipe is not None and any(module is m for m in recipe.frozen_encoders()):
            events.append((type(module).__name__, str(a[0]) if a else str(k.get("device"))))
        return to(module, *a, **k)

    monkeypatch.setattr(torch.nn.Module, "to", spy)
    monkeypatch.setattr(SDRecipe, "per_sample_loss", _recording(SDRecipe.per_sample_loss, events))
    argv = ["--train_data_dir", str(mixed), "--output_dir", str(tmp_path / "out"), "--resolution", "32",
            "--train_batch_size", "2", "--max_train_steps", "4", "--checkpointing_steps", "1000", "--cache_latents",
            "--validation_prompt", "a photo", "--num_validation_images", "1"]  # fmt: skip
    cfg = args.parse_recipe_args(SDRecipe, "test", "tiny:sd15", argv)
    recipe_box["recipe"] = recipe = SDRecipe(cfg)
    loop.run(recipe, cfg)
    first_step = events.index("step")
    moved_off = events[:first_step][-2:]
    assert sorted(moved_off) == [("AutoencoderKL", "cpu"), ("CLIPTextModel", "cpu")], events
    after = [e for e in events[first_step:] if e != "step"]  # validation after the epoch's 4 steps
    encoders = ["AutoencoderKL", "CLIPTextModel"]
    assert len(after) == 4 and sorted(n for n, _ in after[:2]) == sorted(n for n, _ in after[2:]) == encoders, after
    assert [d for _, d in after[2:]] == ["cpu", "cpu"], after


def _recording(per_sample_loss, events):
    def wrapped(self, model, encoded):
        events.append("step")
        return per_sample_loss(self, model, encoded)

    return wrapped
