"""Compare two images, or two folders of images matched by file name: MAE, max error, PSNR, SSIM.

The acceptance used by MindONE's MindSpore-vs-PyTorch parity check (tools/lora_conversion/README_CN.md) is a
mean absolute pixel error below 5 on the 0-255 scale, so ``--threshold`` defaults to 5 and the tool exits 1
when any pair's MAE is above it. Errors are on 8-bit RGB values. SSIM is scikit-image's
``structural_similarity`` (Wang et al. 2004, 7x7 window, per channel, ``data_range=255``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

DEFAULT_THRESHOLD = 5.0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
EXIT_OVER_THRESHOLD = 1


@dataclass(frozen=True)
class Metrics:
    """Pixel errors between two same-sized images, on the 0-255 scale; ``psnr_db`` is inf when identical."""

    mae: float
    max_error: int
    psnr_db: float
    ssim: float

    def line(self) -> str:
        return f"mae={self.mae:.4f} max={self.max_error} psnr={self.psnr_db:.2f}dB ssim={self.ssim:.5f}"


def load_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 RGB, shape (H, W, 3). Raises ``UserError`` if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    side = min(a.shape[:2])
    if side < 3:
        return float("nan")  # no window fits
    win = min(7, side if side % 2 else side - 1)  # skimage needs an odd window no larger than the image
    return float(structural_similarity(a, b, channel_axis=2, data_range=255, win_size=win))


def compare_arrays(a: np.ndarray, b: np.ndarray) -> Metrics:
    """Metrics of two uint8 (H, W, C) arrays of the same shape."""
    if a.shape != b.shape:
        raise UserError(f"image sizes differ: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    mse = float(np.mean(diff**2))
    psnr = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    return Metrics(float(diff.mean()), int(diff.max()), psnr, _ssim(a, b))


def compare_images(a: Path, b: Path) -> Metrics:
    """Metrics of two image files (converted to RGB)."""
    return compare_arrays(load_rgb(a), load_rgb(b))


def _images(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}


def pair_up(a: Path, b: Path) -> list[tuple[str, Path, Path]]:
    """(name, path in a, path in b): the two files, or every image name two folders share.

    Raises ``UserError`` when a path is missing, the kinds differ, or an image is in only one folder.
    """
    for p in (a, b):
        if not p.exists():
            raise UserError(f"{p} does not exist")
    if a.is_file() and b.is_file():
        return [(a.name, a, b)]
    if not (a.is_dir() and b.is_dir()):
        raise UserError(f"compare two files or two folders, not a file and a folder: {a}, {b}")
    left, right = _images(a), _images(b)
    only = sorted(set(left) ^ set(right))
    if only:
        raise UserError(f"{len(only)} images are in only one folder: {', '.join(only[:20])}")
    if not left:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {a} or {b}")
    return [(name, left[name], right[name]) for name in left]


def run(args: argparse.Namespace) -> int:
    if not args.threshold >= 0:  # NaN too: every comparison with NaN is false
        raise UserError(f"--threshold {args.threshold} must be a number >= 0 (mean abs error, 0-255), e.g. 5")
    results = [(name, compare_images(pa, pb)) for name, pa, pb in pair_up(args.a, args.b)]
    for name, m in results:
        print(f"{name}: {m.line()}")
    worst_name, worst = max(results, key=lambda r: r[1].mae)
    failed = [name for name, m in results if m.mae > args.threshold]
    verdict = "FAIL" if failed else "PASS"
    mean_mae = sum(m.mae for _, m in results) / len(results)
    print(f"pairs={len(results)} mae_mean={mean_mae:.4f} mae_max={worst.mae:.4f} ({worst_name}) "
          f"threshold={args.threshold:g} {verdict}")  # fmt: skip
    return EXIT_OVER_THRESHOLD if failed else 0


def add_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """The ``compare`` subcommand's arguments."""
    parser.add_argument("a", type=Path, help="image file or folder")
    parser.add_argument("b", type=Path, help="image file or folder (folders are matched by file name)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="exit 1 if any pair's mean abs pixel error (0-255) exceeds this (default: %(default)s, "
                             "MindONE's MS-vs-PT acceptance)")  # fmt: skip
    parser.set_defaults(func=run)
