from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """8 generated 32x32 captioned shapes (an imagefolder with metadata.jsonl)."""
    from diffusers_npu.training.data import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", num_images=8, resolution=32)
