from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """8 generated 32x32 captioned shapes (an imagefolder with metadata.jsonl)."""
    from diffusers_npu.training.data import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", num_images=8, resolution=32)


# (height, width) of the mixed-size dataset: portrait, landscape, square, wide; two images each.
MIXED_SIZES = ((48, 24), (24, 48), (32, 32), (20, 60))


def write_mixed_dataset(root: Path) -> Path:
    """8 images of mixed sizes (MIXED_SIZES, two each) with kohya-style ``.txt`` captions beside them."""
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(8):
        h, w = MIXED_SIZES[i % 4]
        Image.new("RGB", (w, h), (40 * i, 255 - 30 * i, 128)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"a photo of shape {i}, colour {i % 3}\n")
    return root


@pytest.fixture(scope="session")
def mixed(tmp_path_factory) -> Path:
    return write_mixed_dataset(tmp_path_factory.mktemp("data") / "mixed")
