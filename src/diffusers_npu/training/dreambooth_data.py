"""DreamBooth data: a folder of subject images under one instance prompt, and prior-preservation class images.

Ruiz et al. (2023), "DreamBooth", §4.2: the class-specific prior-preservation loss trains on images the base
model generated for the class prompt alongside the subject images. As diffusers' ``train_dreambooth_lora_*``
scripts: an item pairs instance image ``i % n_instance`` with class image ``i % n_class``; a batch puts the
instance rows first and the class rows after them (one forward pass for both); missing class images are
generated with the base pipeline before training. Transforms are ``data.ImageCaptionDataset``'s (PIL only).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UserError
from . import data

logger = logging.getLogger("diffusers_npu.train")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(folder: str | Path | None, flag: str, required: bool = True) -> list[Path]:
    """The image files directly in ``folder``, sorted; a one-line UserError if it is missing (or, with
    ``required``, holds none)."""
    if folder is None:
        raise UserError(f"{flag} is required: a folder of images")
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"{flag} {folder} is not a directory; pass a folder of {'/'.join(IMAGE_SUFFIXES)} images")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if required and not images:
        raise UserError(f"{flag} {folder} holds no images ({'/'.join(IMAGE_SUFFIXES)}); add the subject's photos")
    return images


def folder_rows(images: list[Path], prompt: str, resolution: int, center_crop: bool, interpolation: str,
                seed: int) -> data.ImageCaptionDataset:  # fmt: skip
    """One prompt for every image of a folder (DreamBooth's instance or class images) as dataset rows."""
    table = [{"image": str(p), "text": prompt} for p in images]
    return data.ImageCaptionDataset(table, "image", "text", resolution, center_crop, interpolation, seed)


class DreamBoothDataset(torch.utils.data.Dataset):
    """Items ``{"instance": row, "class": row or None}``; a row is an ``ImageCaptionDataset`` item
    (``pixel_values`` (3, R, R) in [-1, 1], ``caption``, ...). Batch with :meth:`collate`.

    ``instance``: the subject's rows, one prompt for all (:func:`folder_rows`) or a caption per image (as
    upstream's ``--caption_column``); ``klass``: the prior-preservation class rows, or None."""

    def __init__(self, instance: data.ImageCaptionDataset, klass: data.ImageCaptionDataset | None = None):
        self.instance, self.klass = instance, klass
        self.length = max(len(self.instance), len(self.klass)) if self.klass else len(self.instance)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if isinstance(key, tuple):  # (position, epoch) from a bucket sampler over the instance rows alone
            return {"instance": self.instance[key], "class": None}
        klass = None if self.klass is None else self.klass[key % len(self.klass)]
        return {"instance": self.instance[key % len(self.instance)], "class": klass}

    @staticmethod
    def collate(examples: list[dict]) -> dict:
        """``data.collate`` over the instance rows then the class rows, plus ``is_prior`` (B,) marking the latter."""
        rows = [e["instance"] for e in examples] + [e["class"] for e in examples if e["class"] is not None]
        batch = data.collate(rows)
        batch["is_prior"] = torch.arange(len(rows)) >= len(examples)
        return batch


def ensure_class_images(
    class_dir: str | Path,
    class_prompt: str,
    num_class_images: int,
    make_pipeline: Callable[[], object],
    resolution: int,
    batch_size: int,
    seed: int,
) -> list[Path]:
    """Fill ``class_dir`` up to ``num_class_images`` images generated from ``class_prompt``; return all of them.

    ``make_pipeline`` is called only when images are missing. Generation is seeded (``seed`` + image number), so
    a rerun regenerates the same images. Files are named ``<number>-<sha1 of the pixels>.png`` as diffusers does.
    """
    folder = Path(class_dir)
    folder.mkdir(parents=True, exist_ok=True)
    have = list_images(folder, "--class_data_dir", required=False)
    missing = num_class_images - len(have)
    if missing <= 0:
        return have
    logger.info("generating %d class images for %r into %s", missing, class_prompt, folder)
    pipe = make_pipeline()
    pipe.set_progress_bar_config(disable=True)
    for start in range(len(have), num_class_images, batch_size):
        count = min(batch_size, num_class_images - start)
        generators = [torch.Generator().manual_seed(seed + start + k) for k in range(count)]
        images = pipe([class_prompt] * count, generator=generators, height=resolution, width=resolution).images
        for k, image in enumerate(images):
            digest = hashlib.sha1(image.tobytes(), usedforsecurity=False).hexdigest()[:16]
            image.save(folder / f"{start + k:05d}-{digest}.png")
    return list_images(folder, "--class_data_dir")
