"""Data sources the recipes read (save_to_disk, parquet, imagefolder), column checks, deterministic crops, and
the generated shapes dataset."""

from __future__ import annotations

import io
import json
import random
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_npu.errors import UserError
from diffusers_npu.training import data


def _rows(n: int = 4) -> dict[str, list]:
    images = [Image.new("RGB", (48, 40), (40 * i, 200, 10)) for i in range(n)]
    return {"image": images, "text": [f"caption {i}" for i in range(n)]}


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(params=["save_to_disk", "parquet", "imagefolder"])
def source(request, tmp_path):
    """The same 4 images + captions, written in each local layout the recipes accept."""
    rows = _rows()
    if request.param == "save_to_disk":
        datasets.Dataset.from_dict(
            rows, features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
        ).save_to_disk(tmp_path / "d")
    elif request.param == "parquet":  # the reference's offline pokemon layout: data/train-*.parquet
        (tmp_path / "d" / "data").mkdir(parents=True)
        ds = datasets.Dataset.from_dict({"image": [{"bytes": _png_bytes(i), "path": None} for i in rows["image"]], "text": rows["text"]},
                                        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}))  # fmt: skip
        ds.to_parquet(tmp_path / "d" / "data" / "train-00000-of-00001.parquet")
    else:
        (tmp_path / "d").mkdir()
        for i, image in enumerate(rows["image"]):
            image.save(tmp_path / "d" / f"{i}.png")
        lines = [f'{{"file_name": "{i}.png", "text": "{t}"}}\n' for i, t in enumerate(rows["text"])]
        (tmp_path / "d" / "metadata.jsonl").write_text("".join(lines))
    return tmp_path / "d", request.param


def test_every_local_layout_loads_and_decodes(source):
    path, _ = source
    hf, image_col, caption_col = data.load_image_text_dataset(None, str(path))
    assert (len(hf), image_col, caption_col) == (4, "image", "text")
    ds = data.ImageCaptionDataset(hf, image_col, caption_col, resolution=32)
    item = ds[1]
    assert item["pixel_values"].shape == (3, 32, 32)
    assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
    assert item["caption"] == "caption 1" and item["original_size"] == (40, 48)
    batch = data.collate([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["original_sizes"].shape == (2, 2)


def test_random_crops_are_deterministic_per_seed_and_index(source):
    path, _ = source
    hf, image_col, caption_col = data.load_image_text_dataset(None, str(path))
    a, b, c = (data.ImageCaptionDataset(hf, image_col, caption_col, 24, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a[i]["pixel_values"], b[i]["pixel_values"]) for i in range(4))
    assert [a[i]["crop_top_left"] for i in range(4)] != [c[i]["crop_top_left"] for i in range(4)]


def test_center_crop_and_original_size(tmp_path):
    data.make_shapes_dataset(tmp_path, num_images=1, resolution=40)
    hf, image_col, caption_col = data.load_image_text_dataset(None, str(tmp_path))
    item = data.ImageCaptionDataset(hf, image_col, caption_col, 32, center_crop=True)[0]
    assert item["original_size"] == (40, 40) and item["crop_top_left"] == (0, 0)  # 40 -> 32: nothing to crop


@pytest.mark.parametrize("kwargs,message", [
    (dict(image_column="picture"), "--image_column 'picture' is not a dataset column; columns are: image, text"),
    (dict(caption_column="prompt"), "--caption_column 'prompt' is not a dataset column"),
])  # fmt: skip
def test_wrong_column_names_the_columns(tmp_path, kwargs, message):
    datasets.Dataset.from_dict(_rows()).save_to_disk(tmp_path / "d")
    with pytest.raises(UserError, match=message):
        data.load_image_text_dataset(None, str(tmp_path / "d"), **kwargs)


def test_missing_or_empty_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load_image_text_dataset(None, str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no data"):
        data.load_image_text_dataset(None, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        data.load_image_text_dataset(None, str(tmp_path / "empty"))


def test_corrupt_image_is_named_by_its_path(tmp_path):
    data.make_shapes_dataset(tmp_path, num_images=3, resolution=16)
    (tmp_path / "00002.png").write_bytes(b"not a png")
    hf, image_col, caption_col = data.load_image_text_dataset(None, str(tmp_path))
    ds = data.ImageCaptionDataset(hf, image_col, caption_col, 16)
    ds[0]
    with pytest.raises(UserError, match=r"image \S*00002.png of the dataset cannot be decoded"):
        ds[2]


def test_flipped_crop_coordinates_locate_the_crop_in_the_mirrored_image(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    datasets.Dataset.from_dict({"image": [image], "text": ["x"]}).save_to_disk(tmp_path / "d")
    hf, image_col, caption_col = data.load_image_text_dataset(None, str(tmp_path / "d"))
    item = data.ImageCaptionDataset(hf, image_col, caption_col, 24, seed=3)[0]
    resized = image.resize((29, 24), Image.Resampling.BILINEAR)  # shorter side 40 -> 24, as the dataset does
    mirrored = np.asarray(resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT), dtype=np.float32) / 127.5 - 1
    top, left = item["flipped_crop_top_left"]
    expected = torch.from_numpy(mirrored[top : top + 24, left : left + 24].copy()).permute(2, 0, 1)
    assert torch.allclose(item["pixel_values"].flip(-1), expected)


def test_random_flip_moves_sdxl_crop_coordinates_to_the_mirrored_frame():
    from diffusers_npu.training.recipes.common import pixels

    batch = {"pixel_values": torch.arange(8.0).reshape(8, 1, 1, 1).expand(8, 3, 2, 2).clone(),
             "crop_top_lefts": torch.zeros(8, 2, dtype=torch.long), "flipped_crop_top_lefts": torch.ones(8, 2, dtype=torch.long)}  # fmt: skip
    batch["pixel_values"][:, :, :, 1] += 100  # right column differs: a flip is visible
    torch.manual_seed(0)
    out = pixels(batch, torch.device("cpu"), torch.float32, random_flip=True)
    flipped = out[:, 0, 0, 0] >= 100
    assert 0 < flipped.sum() < 8
    assert torch.equal(batch["crop_top_lefts"][:, 0] == 1, flipped)


def _captions(path) -> Counter:
    return Counter(json.loads(line)["text"] for line in (path / "metadata.jsonl").read_text().splitlines())


def test_shapes_dataset_draws_every_combination_once_per_pass(tmp_path):
    n = len(data.COMBOS)
    counts = _captions(data.make_shapes_dataset(tmp_path / "all", num_images=2 * n + 1, resolution=16))
    assert len(counts) == n and sorted(counts.values()) == [2] * (n - 1) + [3]  # random draws would repeat some
    two = [("circle", "red", "white"), ("square", "blue", "black")]
    counts = _captions(data.make_shapes_dataset(tmp_path / "two", num_images=5, resolution=16, combos=two))
    assert set(counts) == {"a red circle on a white background", "a blue square on a black background"}
    assert sorted(counts.values()) == [2, 3]


@pytest.mark.parametrize("size", [16, 32, 64])
def test_drawn_shapes_cover_the_centre_and_leave_the_corners(size):
    """What the quickstart's colour check relies on, for every combination and many random sizes/positions."""
    rng = random.Random(0)
    for shape, colour, background in data.COMBOS:
        for _ in range(20):
            pixels = np.asarray(data.draw_shape(shape, colour, background, size, rng))
            assert tuple(pixels[size // 2, size // 2]) == data.COLOURS[colour], (shape, colour, background)
            for corner in (pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]):
                assert tuple(corner) == data.BACKGROUNDS[background], (shape, colour, background)
