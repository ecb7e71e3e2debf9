"""Check every training image before the first step: readable header, size, a caption. ``--bad_images``.

Opening an image with PIL reads its header only (``Image.open`` is lazy; ``verify()`` checks the file's
structure without decoding the pixels), so a 20,000-image dataset is checked in seconds, not decoded twice.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

from PIL import Image

from ..errors import UserError
from .captions import as_caption_list

logger = logging.getLogger("diffusers_npu.train")
BAD_IMAGES = ("error", "skip")
_LISTED = 5  # files named in the one-line error; the rest are counted


@dataclass
class CheckResult:
    """Per row: ``sizes[i]`` (height, width), or the row index in one of the problem lists with its reason."""

    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)
    unreadable: list[tuple[int, str]] = field(default_factory=list)
    too_small: list[tuple[int, str]] = field(default_factory=list)
    uncaptioned: list[tuple[int, str]] = field(default_factory=list)

    @property
    def problems(self) -> list[tuple[str, list[tuple[int, str]]]]:
        found = [("unreadable", self.unreadable), ("smaller than the smallest bucket", self.too_small),
                 ("without a caption", self.uncaptioned)]  # fmt: skip
        return [(what, rows) for what, rows in found if rows]


def _name(value, index: int) -> str:
    """What a user can find the image by: its path where the dataset has one, else its row number."""
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return value if isinstance(value, str) else f"row {index}"


def _header_size(value) -> tuple[int, int]:
    """(height, width) from the image header; raises what PIL raises for a broken file."""
    if isinstance(value, Image.Image):
        return value.height, value.width
    source = io.BytesIO(value["bytes"]) if isinstance(value, dict) and value.get("bytes") else value
    source = source["path"] if isinstance(source, dict) else source
    with Image.open(source) as image:
        image.verify()
        return image.height, image.width


def check_images(rows, image_column: str, caption_column: str, min_side: int | None = None) -> CheckResult:
    """Check each row's image header and caption; ``min_side``: the smallest bucket side an image must reach."""
    result = CheckResult()
    for index in range(len(rows)):
        row = rows[index]
        name = _name(row[image_column], index)
        try:
            size = _header_size(row[image_column])
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for broken files
            result.unreadable.append((index, f"{name} ({type(err).__name__})"))
            continue
        if min_side is not None and min(size) < min_side:
            result.too_small.append((index, f"{name} ({size[1]}x{size[0]})"))
        elif not as_caption_list(row[caption_column]) or not any(
            c.strip() for c in as_caption_list(row[caption_column])
        ):
            result.uncaptioned.append((index, name))
        else:
            result.sizes[index] = size
    return result


def apply_policy(result: CheckResult, policy: str) -> list[int]:
    """The rows to train on. ``error``: a one-line UserError naming the bad files; ``skip``: leave them out and
    log how many, per reason."""
    if policy not in BAD_IMAGES:
        raise UserError(f"--bad_images {policy!r}: use error or skip")
    for what, rows in result.problems:
        if policy == "error":
            named = ", ".join(name for _, name in rows[:_LISTED]) + (
                f" and {len(rows) - _LISTED} more" if len(rows) > _LISTED else ""
            )
            raise UserError(
                f"{len(rows)} training image(s) {what}: {named}; fix or remove them, or pass --bad_images skip"
            )
        logger.info("skipping %d image(s) %s (--bad_images skip)", len(rows), what)
    return sorted(result.sizes)
