"""Image + caption datasets for the training recipes, loaded with ``datasets``; a generated offline dataset.

Sources (``load_image_text_dataset``): a hub dataset name; a local directory written by ``save_to_disk``; a
directory of parquet files with image and text columns (the reference's offline pokemon layout); an
imagefolder with ``metadata.jsonl`` / ``metadata.csv``; a folder of images with caption files beside them
(kohya's layout, training/captions.py). Images are checked before training (training/image_check.py) and
decoded here, not by ``datasets``. Transforms use PIL only (no torchvision): resize to cover the target shape
(``--resolution`` square, or the image's aspect-ratio bucket), crop, scale to [-1, 1]. Crops are deterministic
per (seed, index) and captions per (seed, epoch, position), so a resumed run sees exactly what an uninterrupted
one does.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import random
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import UserError, cli_entry, first_line
from .buckets import Shape, cover_and_crop
from .captions import CaptionOptions, as_caption_list, caption_rng, choose_caption, scan_caption_folder

logger = logging.getLogger("diffusers_npu.train")
NO_CAPTION_OPTIONS = CaptionOptions()

IMAGE_COLUMNS = ("image", "img", "images", "file_name")
CAPTION_COLUMNS = ("text", "caption", "captions", "prompt", "additional_feature")
INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _load_local(path: Path, cache_dir: str | None, caption_extension: str | None):
    import datasets

    if not path.exists():
        raise UserError(f"--train_data_dir {path} does not exist; pass a directory with images or a saved dataset")
    metadata = any((path / f"metadata.{ext}").is_file() for ext in ("jsonl", "csv", "parquet"))
    if caption_extension is not None or (path.is_dir() and not metadata and any(path.rglob("*.txt"))):
        rows = scan_caption_folder(path, caption_extension or ".txt")  # kohya's layout: captions beside images
        if not rows:
            raise UserError(f"--train_data_dir {path} holds no images beside caption files; add PNG/JPEG images")
        return rows
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            ds = datasets.load_from_disk(str(path))
            return ds["train"] if isinstance(ds, datasets.DatasetDict) else ds
        parquet = sorted(path.rglob("*.parquet"))
        if parquet:
            return datasets.load_dataset(
                "parquet", data_files=[str(p) for p in parquet], split="train", cache_dir=cache_dir
            )
    except Exception as err:  # datasets and pyarrow raise many types for damaged files
        first = first_line(err)
        raise UserError(f"--train_data_dir {path} holds a damaged saved dataset or parquet file ({first}); "
                        "save it again or remove the broken file") from None  # fmt: skip
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
            f"cannot load dataset {name!r} ({type(err).__name__}: {first_line(err)}); "
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
    caption_extension: str | None = None,
):
    """Return ``(rows, image_column, caption_column)``: a ``datasets.Dataset`` with its images left undecoded, or
    for a caption-file folder a list of ``{"image", "text", "repeats"}`` rows."""
    import datasets

    from ..logs import adopt_library_logger

    adopt_library_logger("datasets")

    if dataset_name is None and train_data_dir is None:
        raise UserError("no data: pass --dataset_name (hub) or --train_data_dir (local directory)")
    ds = (
        _load_local(Path(train_data_dir), cache_dir, caption_extension)
        if train_data_dir
        else _load_hub(dataset_name, dataset_config_name, cache_dir)
    )
    if isinstance(ds, list):
        return ds[:max_train_samples] if max_train_samples is not None else ds, "image", "text"
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
        name = value if isinstance(value, str) else (value.get("path") if isinstance(value, dict) else None)
        raise UserError(
            f"image {name or index} of the dataset cannot be decoded ({err}); remove or replace it"
        ) from None


def _captions(value, index: int) -> list[str]:
    captions = as_caption_list(value)
    if not captions:
        raise UserError(f"caption {index} of the dataset is {type(value).__name__}, not text; check --caption_column")
    return captions


class ImageCaptionDataset(torch.utils.data.Dataset):
    """Items: ``pixel_values`` (3, H, W) in [-1, 1], ``caption``, ``original_size`` and ``crop_top_left``
    (height, width order, for SDXL's micro-conditioning) and ``index``.

    Positions: row ``i`` appears ``repeats x rows[i]["repeats"]`` times (kohya's ``N_name`` folders and
    ``--dataset_repeats``). ``shapes[position]`` is its training (height, width); default ``resolution`` square.
    Items are fetched by position, or by ``(position, epoch)`` from a :class:`~.buckets.BucketBatchSampler`, which
    makes the caption (several per image, dropout, tag shuffle: ``captions``) a choice of that epoch.
    """

    def __init__(self, hf, image_column: str, caption_column: str, resolution: int, center_crop: bool = False,
                 interpolation: str = "bilinear", seed: int = 0, *, captions: CaptionOptions = NO_CAPTION_OPTIONS,
                 repeats: int = 1, shapes: list[Shape] | None = None):  # fmt: skip
        if interpolation not in INTERPOLATION:
            raise UserError(
                f"--image_interpolation_mode {interpolation!r} unknown; choose one of {', '.join(INTERPOLATION)}"
            )
        self.hf, self.image_column, self.caption_column = hf, image_column, caption_column
        self.resolution, self.center_crop, self.seed = resolution, center_crop, seed
        self.interpolation, self.captions = INTERPOLATION[interpolation], captions
        per_row = [r.get("repeats", 1) for r in hf] if isinstance(hf, list) else [1] * len(hf)
        self.rows = [i for i, n in enumerate(per_row) for _ in range(n * repeats)]  # position -> row
        self.shapes = shapes or [(resolution, resolution)] * len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        position, epoch = key if isinstance(key, tuple) else (key, 0)
        index = self.rows[int(position)]
        row = self.hf[index]
        image = _decode(row[self.image_column], index)
        original = (image.height, image.width)
        (h, w) = self.shapes[int(position)]
        (rh, rw), (max_top, max_left) = cover_and_crop(image.height, image.width, (h, w))
        image = image.resize((rw, rh), self.interpolation)
        if self.center_crop:
            top, left = max_top // 2, max_left // 2
        else:
            rng = random.Random(self.seed * 1_000_003 + int(index))
            top, left = rng.randint(0, max_top), rng.randint(0, max_left)
        image = image.crop((left, top, left + w, top + h))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1.0
        captions = _captions(row[self.caption_column], index)
        return {
            "pixel_values": pixels,
            "caption": choose_caption(captions, self.captions, caption_rng(self.seed, epoch, int(position))),
            "original_size": original,
            "crop_top_left": (top, left),
            # Where this crop sits in the mirrored image: SDXL's crop conditioning after --random_flip.
            "flipped_crop_top_left": (top, rw - w - left),
            "index": int(index),
        }


def image_caption_dataset(cfg, folder: str | None = None, rows=None) -> ImageCaptionDataset:
    """Image-caption data as an ``ImageDataConfig``'s flags say: the source (``--dataset_name`` or ``folder``,
    default ``--train_data_dir``; columns, ``--caption_extension``, ``--max_train_samples``), every image checked
    first (``--bad_images``), repeats, caption options and, with ``--enable_bucket``, each image's bucket shape.
    ``rows``: ``{"image": path, "text": caption}`` rows to use instead of a source (DreamBooth's one prompt)."""
    from accelerate import PartialState

    from . import buckets, image_check

    if rows is not None:
        image_col, caption_col = "image", "text"
    else:
        rows, image_col, caption_col = load_image_text_dataset(
            cfg.dataset_name, folder or cfg.train_data_dir, cfg.image_column, cfg.caption_column,
            cfg.dataset_config_name, cfg.cache_dir, cfg.max_train_samples, cfg.caption_extension,
        )  # fmt: skip
    min_side = cfg.min_bucket_reso if cfg.enable_bucket else None
    checked = image_check.check_images(rows, image_col, caption_col, min_side)
    keep = image_check.apply_policy(checked, cfg.bad_images)
    if len(keep) < len(rows):
        rows = [rows[i] for i in keep] if isinstance(rows, list) else rows.select(keep)
    if not len(rows):
        raise UserError("no training images are left after --bad_images skip; check the dataset")
    options = CaptionOptions(cfg.caption_dropout_rate, cfg.shuffle_caption, cfg.keep_tokens)
    dataset = ImageCaptionDataset(rows, image_col, caption_col, cfg.resolution, cfg.center_crop,
                                  cfg.image_interpolation_mode, cfg.seed, captions=options, repeats=cfg.dataset_repeats)  # fmt: skip
    if cfg.enable_bucket:
        table = buckets.bucket_shapes(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_reso_steps)
        sizes = [checked.sizes[i] for i in keep]
        dataset.shapes = [buckets.nearest_bucket(table, *sizes[row]) for row in dataset.rows]
    if PartialState().is_main_process:
        for (h, w), count in sorted(Counter(dataset.shapes).items()):
            logger.info("bucket %dx%d (width x height): %d images", w, h, count)
    return dataset


def bucket_sampler(dataset: ImageCaptionDataset, batch_size: int, num_replicas: int, seed: int):
    """Same-shape batches of ``dataset`` (its ``shapes``) in rank-aligned groups: the text-to-image loader order."""
    from .buckets import BucketBatchSampler

    positions: dict[Shape, list[int]] = {}
    for position, shape in enumerate(dataset.shapes):
        positions.setdefault(shape, []).append(position)
    return BucketBatchSampler(positions, batch_size, num_replicas, seed)


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
# Every (shape, colour, background) the generator draws by default: 3 x 4 x 2 = 24 captions.
COMBOS = tuple(itertools.product(SHAPES, COLOURS, BACKGROUNDS))
# Shape half-size and centre offset, as fractions of the image side. The shape always covers the image centre
# and leaves the corners to the background, so "centre colour" and "corner colour" read the caption back
# (the quickstart's check, diffusers_npu.quickstart.read_colours).
HALF_SIZE = (0.25, 0.35)
MAX_OFFSET = 0.05


def shape_caption(shape: str, colour: str, background: str) -> str:
    """The caption of one generated image: ``a red circle on a white background``."""
    return f"a {colour} {shape} on a {background} background"


def draw_shape(shape: str, colour: str, background: str, size: int, rng: random.Random) -> Image.Image:
    """One ``size`` x ``size`` image of ``shape`` in ``colour`` on ``background`` (names from COLOURS,
    BACKGROUNDS, SHAPES), its size and position drawn from ``rng``."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    half = rng.uniform(*HALF_SIZE) * size
    cx, cy = (size / 2 + rng.uniform(-MAX_OFFSET, MAX_OFFSET) * size for _ in range(2))
    if shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=COLOURS[colour])
    else:  # centroid at (cx, cy), so the centre lies well inside the triangle, not near its apex
        apex, base = cy - half * 4 / 3, cy + half * 2 / 3
        draw.polygon([(cx, apex), (cx - half, base), (cx + half, base)], fill=COLOURS[colour])
    return image


def make_shapes_dataset(out: str | Path, num_images: int = 64, resolution: int = 64, seed: int = 0,
                        combos: Sequence[tuple[str, str, str]] = COMBOS) -> Path:  # fmt: skip
    """Write an imagefolder (PNGs + ``metadata.jsonl`` with ``text``) of captioned coloured shapes; return it.

    ``combos`` are (shape, colour, background) triples. Each pass over them draws every one once, in a seeded
    random order, so ``num_images >= len(combos)`` covers every caption and no caption is more than one image
    ahead of another: with 64 random draws from 24 combinations some captions never appear.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows, order = [], []
    for i in range(num_images):
        if not order:
            order = rng.sample(list(combos), len(combos))
        shape, colour, background = order.pop()
        name = f"{i:05d}.png"
        draw_shape(shape, colour, background, resolution, rng).save(out / name)
        rows.append({"file_name": name, "text": shape_caption(shape, colour, background)})
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
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserError(f"{args.out} exists and is not an empty folder; name a new folder (nothing was written)")
    if args.num_images < 1 or args.resolution < 8:
        raise UserError("--num_images must be >= 1 and --resolution >= 8")
    print(make_shapes_dataset(args.out, args.num_images, args.resolution, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
