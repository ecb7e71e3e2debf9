"""README command 1, shortened: the tiny model trains on generated shapes, the loss falls, a grid is sampled."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from diffusers_npu.quickstart import loss_fell


def test_loss_fell_compares_first_and_last_tenth():
    assert loss_fell([1.0] * 10 + [0.5] * 80 + [0.2] * 10) == (1.0, 0.2, True)
    assert loss_fell([1.0] * 10 + [0.5] * 80 + [0.9] * 10)[2] is False  # 10% lower is not "clearly"
    assert loss_fell([0.5, 0.4, 0.1])[2] is True  # under 10 steps: first vs last step


@pytest.mark.slow
def test_quickstart_trains_until_the_loss_falls_and_samples_a_grid(tmp_path):
    cmd = [sys.executable, "-m", "diffusers_npu.quickstart", "--output_dir", str(tmp_path), "--steps", "30", "--vae_steps", "20",
           "--num_images", "16"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loss: first 10% of steps" in proc.stdout
    grid = Image.open(tmp_path / "samples.png")
    assert grid.size == (4 * 32, 32)
    assert (tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_too_few_steps_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffusers_npu.quickstart", "--output_dir", str(tmp_path),
                           "--steps", "3"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --steps 3 is too few")
    assert not (tmp_path / "model").exists()
