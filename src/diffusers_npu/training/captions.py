"""Captions as people keep them: a caption file beside each image, several captions per image, kohya's tag
options. Pure functions of the inputs and a seeded ``random.Random``; nothing here reads the global RNG.

Folder layout (kohya sd-scripts, library/train_util.py ``DreamBoothDataset``/``FineTuningDataset``):
``DIR/photo.png`` with ``DIR/photo.txt`` (``--caption_extension``); subfolders named ``N_name`` repeat their
images N times per epoch. A caption file with several non-empty lines holds several captions.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_REPEATS_DIR = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class CaptionOptions:
    """kohya's per-epoch caption options: ``--caption_dropout_rate``, ``--shuffle_caption``, ``--keep_tokens``."""

    dropout_rate: float = 0.0
    shuffle: bool = False
    keep_tokens: int = 0

    @property
    def varies(self) -> bool:
        return self.dropout_rate > 0 or self.shuffle


def read_caption_file(path: Path) -> list[str]:
    """The captions in one caption file: its non-empty lines, stripped (an empty file gives none)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def scan_caption_folder(root: Path, extension: str) -> list[dict]:
    """Rows ``{"image": path, "text": [captions], "repeats": n}`` for every image under ``root``: directly in it
    (repeats 1) or in ``N_name`` subfolders (repeats N), sorted by path. A missing caption file gives ``[]``."""
    folders = [(root, 1)] + [
        (d, int(m.group(1))) for d in sorted(root.iterdir()) if d.is_dir() and (m := _REPEATS_DIR.match(d.name))
    ]
    rows = []
    for folder, repeats in folders:
        for image in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            caption = image.with_suffix(extension)
            rows.append(
                {"image": str(image), "text": read_caption_file(caption) if caption.is_file() else [],
                 "repeats": repeats}
            )  # fmt: skip
    return rows


def as_caption_list(value: object) -> list[str] | None:
    """A dataset cell as a list of captions: a string, or a list/tuple of strings; None for anything else."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def choose_caption(captions: list[str], options: CaptionOptions, rng: random.Random) -> str:
    """One caption for this epoch: drawn from ``captions``, then dropped to "" with ``dropout_rate``, else its
    comma-separated tags shuffled with the first ``keep_tokens`` kept in place (kohya ``process_caption``)."""
    caption = captions[0] if len(captions) == 1 else rng.choice(captions)
    if options.dropout_rate > 0 and rng.random() < options.dropout_rate:
        return ""
    if options.shuffle:
        tags = [t.strip() for t in caption.split(",")]
        kept, rest = tags[: options.keep_tokens], tags[options.keep_tokens :]
        rng.shuffle(rest)
        caption = ", ".join(kept + rest)
    return caption


def caption_rng(seed: int, epoch: int, position: int) -> random.Random:
    """The caption RNG of one example in one epoch: independent of workers, ranks and resume."""
    return random.Random((seed * 1_000_003 + epoch) * 1_000_033 + position)
