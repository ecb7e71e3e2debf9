"""Aspect-ratio buckets: kohya's table, nearest-ratio assignment, same-shape rank-aligned batches, and a real run
whose batches are shape-uniform with SDXL's time ids carrying the real sizes; resume stays bit-exact."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest
import torch

from diffusers_npu.training import buckets

from .conftest import MIXED_SIZES
from .helpers import train

BUCKET_FLAGS = ("--enable_bucket", "--min_bucket_reso", "16", "--max_bucket_reso", "64", "--bucket_reso_steps", "8")


def test_bucket_table_matches_kohyas_rule_by_hand():
    # 64^2 = 4096 px, sides 32..96 in steps of 16: w=32 -> h=min(96, 128)=96; w=48 -> 4096//48=85 -> 80;
    # w=64 -> 64; w=80 -> 51 -> 48; w=96 -> 42 -> 32; each also transposed.
    assert buckets.bucket_shapes(64, 32, 96, 16) == [(32, 96), (48, 80), (64, 64), (80, 48), (96, 32)]
    assert buckets.bucket_shapes(32, 16, 64, 16) == [(16, 48), (16, 64), (32, 32), (48, 16), (64, 16)]


def test_nearest_bucket_and_cover_crop():
    table = buckets.bucket_shapes(64, 32, 96, 16)
    assert buckets.nearest_bucket(table, 100, 200) == (48, 80)  # ratio 2 -> 80/48 = 1.67 (next: 3, 1)
    assert buckets.nearest_bucket(table, 200, 100) == (80, 48)
    assert buckets.nearest_bucket(table, 50, 50) == (64, 64)
    size, slack = buckets.cover_and_crop(100, 200, (48, 80))
    assert size == (48, 96) and slack == (0, 16)  # scaled by max(48/100, 80/200): height fits, width crops


def _all(sampler, epoch=0):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_batches_are_one_shape_and_rank_groups_share_it():
    shapes = {(16, 32): list(range(5)), (32, 16): list(range(5, 8)), (24, 24): [8]}
    where = {p: s for s, ps in shapes.items() for p in ps}
    for replicas in (1, 2, 3):
        sampler = buckets.BucketBatchSampler(shapes, batch_size=2, num_replicas=replicas, seed=0)
        batches = _all(sampler)
        assert len(batches) == len(sampler) and len(batches) % replicas == 0
        assert {e for b in batches for _, e in b} == {0}
        assert all(len({where[p] for p, _ in b}) == 1 for b in batches), "a batch mixes shapes"
        for g in range(0, len(batches), replicas):  # rank r takes batch g + r: all ranks see one shape per step
            assert len({where[b[0][0]] for b in batches[g : g + replicas]}) == 1
        seen = Counter(p for b in batches for p, _ in b)
        assert set(seen) == set(where), "every image is trained every epoch"
        if replicas == 1:
            assert set(seen.values()) == {1}
    sampler = buckets.BucketBatchSampler(shapes, batch_size=2, seed=0)
    assert _all(sampler, 0) == _all(buckets.BucketBatchSampler(shapes, batch_size=2, seed=0), 0)  # seeded
    assert [p for b in _all(sampler, 1) for p, _ in b] != [p for b in _all(sampler, 0) for p, _ in b]


def _capture(monkeypatch, recipe_cls):
    """Run the recipe in process, recording every batch's pixel shape and encoded time ids."""
    seen = {"shapes": [], "time_ids": [], "original": []}
    encode = recipe_cls.encode_batch

    def spy(self, batch):
        seen["shapes"].append(tuple(batch["pixel_values"].shape[-2:]))
        seen["original"].append(batch["original_sizes"].clone())
        out = encode(self, batch)
        seen["time_ids"].append(out.get("time_ids"))
        return out

    monkeypatch.setattr(recipe_cls, "encode_batch", spy)
    return seen


@pytest.mark.slow
def test_sdxl_buckets_batches_are_uniform_and_time_ids_are_real_sizes(tmp_path, mixed, monkeypatch, caplog):
    from diffusers_npu.training import args, loop
    from diffusers_npu.training.recipes.sdxl import SDXLRecipe

    seen = _capture(monkeypatch, SDXLRecipe)
    argv = ["--train_data_dir", str(mixed), "--output_dir", str(tmp_path / "out"), "--resolution", "32",
            "--train_batch_size", "2", "--num_train_epochs", "2", "--checkpointing_steps", "1000", *BUCKET_FLAGS]  # fmt: skip
    cfg = args.parse_recipe_args(SDXLRecipe, "test", "tiny:sdxl", argv)
    with caplog.at_level("INFO", logger="diffusers_npu.train"):
        stats = loop.run(SDXLRecipe(cfg), cfg)
    table = buckets.bucket_shapes(32, 16, 64, 8)
    expected = Counter(buckets.nearest_bucket(table, h, w) for h, w in MIXED_SIZES for _ in range(2))
    assert len(expected) == 4  # portrait, landscape, square, wide: two images each
    assert Counter(seen["shapes"]) == Counter({s: 2 for s in expected})  # one batch of 2 per bucket, 2 epochs
    assert len(stats.step_losses) == 8
    for shape, time_ids, original in zip(seen["shapes"], seen["time_ids"], seen["original"]):
        assert torch.equal(time_ids[:, :2], original.float())  # the image's real (height, width)
        assert (time_ids[:, 4:] == torch.tensor(shape, dtype=torch.float)).all()  # target = the bucket
        assert tuple(original[0].tolist()) in MIXED_SIZES
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bucket ")]
    assert sorted(lines) == sorted(f"bucket {w}x{h} (width x height): {n} images" for (h, w), n in expected.items())


@pytest.mark.slow
def test_sigkill_and_resume_with_buckets_is_bit_identical(tmp_path, mixed):
    from safetensors.torch import load_file

    flags = (*BUCKET_FLAGS, "--random_flip", "--checkpointing_steps", "3", "--lr_scheduler", "cosine")
    train("train_text_to_image.py", tmp_path / "straight", mixed, *flags, steps=6)
    killed = train("train_text_to_image.py", tmp_path / "resumed", mixed, *flags, steps=6, check=False,
                   kill_after_checkpoint=3)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    train("train_text_to_image.py", tmp_path / "resumed", mixed, *flags, "--resume_from_checkpoint", "latest", steps=6)
    a, b = (load_file(tmp_path / d / "unet" / "diffusion_pytorch_model.safetensors") for d in ("straight", "resumed"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.slow
def test_two_processes_with_buckets_share_each_steps_bucket_and_see_what_one_process_sees(tmp_path, mixed):
    """torchrun, 2 ranks x batch 1 against 1 process x batch 2 (the same global batch), 2 epochs: at every step both
    ranks train the same bucket shape, and each epoch trains the same images in the same buckets as one process
    does (the order may differ)."""
    import json
    import os
    import subprocess
    import sys

    from .helpers import EXAMPLES, ROOT, SUMMARY

    def run(name: str, launcher: list[str], batch: str) -> tuple[list, str]:
        record = tmp_path / name
        record.mkdir()
        cmd = [*launcher, str(Path(__file__).with_name("record_batches.py")), str(EXAMPLES / "train_text_to_image.py"),
               "--train_data_dir", str(mixed), "--output_dir", str(tmp_path / f"out-{name}"), "--resolution", "32",
               "--train_batch_size", batch, "--num_train_epochs", "2", "--checkpointing_steps", "1000", *BUCKET_FLAGS]  # fmt: skip
        env = {**os.environ, "RECORD_BATCHES": str(record)}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [json.loads(f.read_text()) for f in sorted(record.glob("rank*.json"))], proc.stdout

    (one,), one_out = run("one", [sys.executable], "2")
    ranks, two_out = run(
        "two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], "1"
    )
    # 8 images in 4 buckets of 2: 4 steps per epoch either way.
    for stdout in (one_out, two_out):
        match = SUMMARY.search(stdout)
        assert match and int(match.group(7)) == 8, stdout[-2000:]
    assert len(ranks) == 2 and len(ranks[0]) == len(ranks[1]) == len(one) == 8
    assert all(a[0] == b[0] for a, b in zip(*ranks)), "both ranks must train one bucket shape at each step"

    def per_epoch(batches: list) -> list[Counter]:
        return [Counter((tuple(shape), i) for shape, idx in batches[e * 4 : (e + 1) * 4] for i in idx) for e in (0, 1)]

    two = [a + b for a, b in zip(per_epoch(ranks[0]), per_epoch(ranks[1]))]
    assert two == per_epoch(one) and all(sum(c.values()) == 8 and max(c.values()) == 1 for c in two)
