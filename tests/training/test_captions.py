"""Captions as people keep them: caption files (kohya's layout, N_name repeats), several captions per image,
dropout, tag shuffle with keep_tokens; and images checked before training (--bad_images)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from PIL import Image

from diffusers_npu.errors import UserError
from diffusers_npu.training import captions, data, image_check

from .helpers import train


def _png(path, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)


def test_caption_folder_rows_with_repeats_and_several_captions(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("first caption\n\n  second caption  \n")
    _png(tmp_path / "3_dog" / "b.jpg")
    (tmp_path / "3_dog" / "b.txt").write_text("a dog")
    _png(tmp_path / "c.png")  # no caption file
    _png(tmp_path / "notes" / "d.png")  # not an N_name folder: not part of the dataset
    rows = captions.scan_caption_folder(tmp_path, ".txt")
    assert [(r["image"].split("/")[-1], r["text"], r["repeats"]) for r in rows] == [
        ("a.png", ["first caption", "second caption"], 1), ("c.png", [], 1), ("b.jpg", ["a dog"], 3)]  # fmt: skip
    ds = data.ImageCaptionDataset(rows, "image", "text", 16, repeats=2)
    assert len(ds) == 2 * (1 + 1 + 3) and Counter(ds.rows) == {0: 2, 1: 2, 2: 6}


def test_several_captions_are_sampled_per_epoch_from_the_seeded_rng(tmp_path):
    _png(tmp_path / "a.png")
    rows = [{"image": str(tmp_path / "a.png"), "text": ["one", "two", "three"]}]
    ds = data.ImageCaptionDataset(rows, "image", "text", 16, seed=3)
    by_epoch = [ds[(0, epoch)]["caption"] for epoch in range(300)]
    assert set(by_epoch) == {"one", "two", "three"}, "every caption is used, not always the first"
    assert min(Counter(by_epoch).values()) >= 70  # uniform: 100 expected each, binomial sd 8
    assert by_epoch[:20] == [ds[(0, e)]["caption"] for e in range(20)], "a pure function of (seed, epoch, position)"
    assert ds[(0, 5)]["caption"] == random.Random((3 * 1_000_003 + 5) * 1_000_033 + 0).choice(["one", "two", "three"])


def test_shuffle_keeps_the_first_tokens_and_every_tag():
    opts = captions.CaptionOptions(shuffle=True, keep_tokens=2)
    text = "sks, dog, sitting, grass, sunny day, photo"
    results = {captions.choose_caption([text], opts, random.Random(i)) for i in range(50)}
    assert len(results) > 10  # actually shuffled
    for r in results:
        tags = r.split(", ")
        assert tags[:2] == ["sks", "dog"] and sorted(tags) == sorted(t.strip() for t in text.split(","))
    no_keep = {captions.choose_caption([text], captions.CaptionOptions(shuffle=True), random.Random(i)).split(", ")[0]
               for i in range(50)}  # fmt: skip
    assert len(no_keep) > 1


def test_caption_dropout_rate_is_the_fraction_of_empty_captions():
    opts = captions.CaptionOptions(dropout_rate=0.3)
    drawn = [captions.choose_caption(["a cat"], opts, random.Random(i)) for i in range(4000)]
    assert set(drawn) == {"", "a cat"}
    assert abs(drawn.count("") / 4000 - 0.3) < 0.03  # binomial sd 0.007
    assert captions.choose_caption(["a cat"], captions.CaptionOptions(), random.Random(0)) == "a cat"


def _bad_dataset(tmp_path):
    for i in range(4):
        _png(tmp_path / f"img{i}.png")
        (tmp_path / f"img{i}.txt").write_text(f"image {i}")
    (tmp_path / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _png(tmp_path / "tiny.png", (8, 8))
    (tmp_path / "tiny.txt").write_text("too small")
    _png(tmp_path / "nocap.png")
    return tmp_path


def test_check_images_names_unreadable_small_and_uncaptioned_files(tmp_path):
    rows = captions.scan_caption_folder(_bad_dataset(tmp_path), ".txt")
    result = image_check.check_images(rows, "image", "text", min_side=16)
    assert [n.split("/")[-1].split(" ")[0] for _, n in result.unreadable] == ["img1.png"]
    assert [n.split("/")[-1] for _, n in result.too_small] == ["tiny.png (8x8)"]
    assert [n.split("/")[-1] for _, n in result.uncaptioned] == ["nocap.png"]
    assert len(image_check.apply_policy(result, "skip")) == 3
    with pytest.raises(UserError, match=r"1 training image\(s\) unreadable: \S*img1.png .*--bad_images skip"):
        image_check.apply_policy(result, "error")


@pytest.mark.slow
def test_bad_images_stop_before_training_or_are_skipped_and_counted(tmp_path):
    bad = _bad_dataset(tmp_path / "data")
    out = tmp_path / "out"
    proc = train("train_text_to_image.py", out, bad, "--enable_bucket", "--min_bucket_reso", "16", "--max_bucket_reso",
                 "64", "--bucket_reso_steps", "8", check=False)  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "img1.png" in errors[0], proc.stderr[-2000:]
    assert not list(out.glob("checkpoint-*")) and not (out / "unet").exists()
    proc = train("train_text_to_image.py", out, bad, "--bad_images", "skip", "--enable_bucket", "--min_bucket_reso",
                 "16", "--max_bucket_reso", "64", "--bucket_reso_steps", "8")  # fmt: skip
    for what in (
        "1 image(s) unreadable",
        "1 image(s) smaller than the smallest bucket",
        "1 image(s) without a caption",
    ):
        assert f"skipping {what}" in proc.stderr
    assert "bucket 32x32 (width x height): 3 images" in proc.stderr


@pytest.mark.slow
def test_caption_files_train_end_to_end(tmp_path, mixed):
    proc = train("train_text_to_image_lora.py", tmp_path / "out", mixed, "--caption_extension", ".txt",
                 "--shuffle_caption", "--keep_tokens", "1", "--caption_dropout_rate", "0.1", "--dataset_repeats", "2")  # fmt: skip
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file(), proc.stderr[-2000:]
    assert "bucket 32x32 (width x height): 16 images" in proc.stderr  # 8 images x 2 repeats, square crops
