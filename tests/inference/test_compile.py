"""--torch_compile: the denoiser is traced by torch.compile and the images equal the uncompiled run."""

from __future__ import annotations

import numpy as np
import torch

from .helpers import FAST, pngs, run_script


def test_torch_compile_traces_the_denoiser_and_keeps_the_images(tmp_path):
    run_script("text-to-image", tmp_path / "plain", *FAST)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    run_script("text-to-image", tmp_path / "compiled", *FAST, "--torch_compile", "eager")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "torch.compile never traced the UNet"
    plain, compiled = pngs(tmp_path / "plain"), pngs(tmp_path / "compiled")
    assert plain.keys() == compiled.keys() and all(np.array_equal(plain[k], compiled[k]) for k in plain)
