"""Fixtures for the inference tests: input images and a loaded tiny SD1.5 pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """A 32x32 RGB image, its 32x32 mask (white square = repaint) and a 16x16 mask that does not fit."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "image.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[::2, ::2]).save(root / "mask16.png")
    return root


@pytest.fixture(scope="module")
def sd15():
    """The tiny SD1.5 pipeline (fp32, CPU), progress bars off."""
    import diffusers

    from diffusers_npu import tiny

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(tiny.tiny_model_path("sd15")))
    pipe.set_progress_bar_config(disable=True)
    return pipe
