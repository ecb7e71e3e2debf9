"""Image + caption datasets for the training recipes, loaded with ``datasets``; a generated offline dataset.

Sources (``load_image_text_dataset``): a hub dataset name; a local directory written by ``save_to_disk``; a
directory of parquet files with image and text columns (the reference's offline pokemon layout); an
imagefolder with ``metadata.jsonl``. Images are decoded here, not by ``datasets``, so a corrupt file is reported
by its index. Transforms use PIL only (no torchvision): resize the shorter side, crop, scale to [-1, 1].
Crops are deterministic per (seed, index), so a resumed run sees exactly the pixels an uninterrupted one does.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import UserError, cli_entry

IMAGE_COLUMNS = ("image", "img", "images", "file_name")
CAPTION_COLUMNS = ("text", "caption", "captions", "prompt", "additional_feature")
INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _load_local(path: Path, cache_dir: str | None):
    import datasets

    if not path.exists():
        raise UserError(f"--train_data_dir {path} does not exist; pass a directory with images or a saved dataset")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        ds = datasets.load_from_disk(str(path))
        return ds["train"] if isinstance(ds, datasets.DatasetDict) else ds
    parquet = sorted(path.rglob("*.parquet"))
    if parquet:
        return datasets.load_dataset(
            "parquet", data_files=[str(p) for p in parquet], split="train", cache_dir=cache_dir
        )
    try:
        return datasets.load_dataset("imagefolder", data_dir=str(path), split="train", cache_dir=cache_dir)
    except (ValueError, FileNotFoundError) as err:
        raise UserError(f"--train_data_dir {path} holds no images, parquet files or saved dataset ({err})") from None


def _load_hub(name: str, config: str | None, cache_dir: str | None):
    import datasets

    try:
        return datasets.load_dataset(name, config, split="train", cache_dir=cache_dir)
    except Exception as err:  # offline, unknown name, no train split: datasets raises many types
        raise UserError(
            f"cannot load dataset {name!r} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "check the name, or download it and pass --train_data_dir"
        ) from None


def _pick(columns: list[str], wanted: str | None, defaults: tuple[str, ...], flag: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise UserError(f"{flag} {wanted!r} is not a dataset column; columns are: {', '.join(columns)}")
        return wanted
    found = next((c for c in defaults if c in columns), None)
    if found is None:
        raise UserError(f"no {flag} given and none of {defaults} in the dataset; columns are: {', '.join(columns)}")
    return found


def load_image_text_dataset(
    dataset_name: str | None,
    train_data_dir: str | None,
    image_column: str | None = None,
    caption_column: str | None = None,
    dataset_config_name: str | None = None,
    cache_dir: str | None = None,
    max_train_samples: int | None = None,
):
    """Return ``(hf_dataset, image_column, caption_column)``; images are left undecoded."""
    import datasets

    if dataset_name is None and train_data_dir is None:
        raise UserError("no data: pass --dataset_name (hub) or --train_data_dir (local directory)")
    ds = (
        _load_local(Path(train_data_dir), cache_dir)
        if train_data_dir
        else _load_hub(dataset_name, dataset_config_name, cache_dir)
    )
    image_col = _pick(ds.column_names, image_column, IMAGE_COLUMNS, "--image_column")
    caption_col = _pick(ds.column_names, caption_column, CAPTION_COLUMNS, "--caption_column")
    if isinstance(ds.features.get(image_col), datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    if max_train_samples is not None:
        ds = ds.select(range(min(max_train_samples, len(ds))))
    if len(ds) == 0:
        raise UserError("the dataset is empty; check --train_data_dir / --dataset_name")
    return ds, image_col, caption_col


def _decode(value, index: int) -> Image.Image:
    """A PIL RGB image from what ``datasets`` stores: {bytes, path}, a path, or an image."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict):
            image = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        else:
            image = Image.open(value)
        image.load()
        return image.convert("RGB")
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for broken files
        raise UserError(f"image {index} of the dataset cannot be decoded ({err}); remove or replace it") from None


def _caption(value, index: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return value[0]  # several captions per image: the first, deterministically
    raise UserError(f"caption {index} of the dataset is {type(value).__name__}, not text; check --caption_column")


class ImageCaptionDataset(torch.utils.data.Dataset):
    """Items: ``pixel_values`` (3, R, R) in [-1, 1], ``caption``, ``original_size`` and ``crop_top_left``
    (height, width order, for SDXL's micro-conditioning) and ``index``."""

    def __init__(self, hf, image_column: str, caption_column: str, resolution: int, center_crop: bool = False,
                 interpolation: str = "bilinear", seed: int = 0):  # fmt: skip
        if interpolation not in INTERPOLATION:
            raise UserError(
                f"--image_interpolation_mode {interpolation!r} unknown; choose one of {', '.join(INTERPOLATION)}"
            )
        self.hf, self.image_column, self.caption_column = hf, image_column, caption_column
        self.resolution, self.center_crop, self.seed = resolution, center_crop, seed
        self.interpolation = INTERPOLATION[interpolation]

    def __len__(self) -> int:
        return len(self.hf)

    def __getitem__(self, index: int) -> dict:
        row = self.hf[int(index)]
        image = _decode(row[self.image_column], index)
        original = (image.height, image.width)
        r = self.resolution
        scale = r / min(image.size)
        size = (max(r, round(image.width * scale)), max(r, round(image.height * scale)))
        image = image.resize(size, self.interpolation)
        if self.center_crop:
            top, left = (image.height - r) // 2, (image.width - r) // 2
        else:
            rng = random.Random(self.seed * 1_000_003 + int(index))
            top, left = rng.randint(0, image.height - r), rng.randint(0, image.width - r)
        width = image.width
        image = image.crop((left, top, left + r, top + r))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1.0
        return {
            "pixel_values": pixels,
            "caption": _caption(row[self.caption_column], index),
            "original_size": original,
            "crop_top_left": (top, left),
            # Where this crop sits in the mirrored image: SDXL's crop conditioning after --random_flip.
            "flipped_crop_top_left": (top, width - r - left),
            "index": int(index),
        }


def image_caption_dataset(cfg) -> ImageCaptionDataset:
    """The image-caption dataset a config's data flags name (``--dataset_name`` / ``--train_data_dir``, columns,
    ``--max_train_samples``), with its resolution and crop settings: the text-to-image recipes' data."""
    hf, image_col, caption_col = load_image_text_dataset(
        cfg.dataset_name, cfg.train_data_dir, cfg.image_column, cfg.caption_column,
        cfg.dataset_config_name, cfg.cache_dir, cfg.max_train_samples,
    )  # fmt: skip
    return ImageCaptionDataset(
        hf, image_col, caption_col, cfg.resolution, cfg.center_crop, cfg.image_interpolation_mode, cfg.seed
    )


def collate(examples: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous(),
        "captions": [e["caption"] for e in examples],
        "original_sizes": torch.tensor([e["original_size"] for e in examples]),
        "crop_top_lefts": torch.tensor([e["crop_top_left"] for e in examples]),
        "flipped_crop_top_lefts": torch.tensor([e["flipped_crop_top_left"] for e in examples]),
        "indices": torch.tensor([e["index"] for e in examples]),
    }


# ---- a generated dataset: coloured shapes with captions ------------------------------------------------------

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle")


def _draw(shape: str, colour: tuple, background: tuple, size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    half = rng.uniform(0.25, 0.4) * size
    cx, cy = (rng.uniform(half, size - half) for _ in range(2))
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=colour)
    return image


def make_shapes_dataset(out: str | Path, num_images: int = 64, resolution: int = 64, seed: int = 0) -> Path:
    """Write an imagefolder (PNGs + ``metadata.jsonl`` with ``text``) of captioned coloured shapes; return it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(num_images):
        shape, colour, background = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(BACKGROUNDS))
        name = f"{i:05d}.png"
        _draw(shape, COLOURS[colour], BACKGROUNDS[background], resolution, rng).save(out / name)
        rows.append({"file_name": name, "text": f"a {colour} {shape} on a {background} background"})
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusers_npu.training.data")
    sub = parser.add_subparsers(dest="command", required=True)
    shapes = sub.add_parser("shapes", help="write the generated coloured-shapes imagefolder")
    shapes.add_argument("out", type=Path)
    shapes.add_argument("--num_images", type=int, default=64)
    shapes.add_argument("--resolution", type=int, default=64)
    shapes.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_shapes_dataset(args.out, args.num_images, args.resolution, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
