"""Bad inputs exit 2 with one ``error:`` line that names the flag and the fix (no traceback)."""

from __future__ import annotations

import numpy as np
import pytest

from .helpers import FAST, script_error

# diffusers' schedulers hand torch tensors to numpy (numpy 2 __array__ DeprecationWarnings), thousands per run.
pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")


@pytest.fixture
def npy(tmp_path):
    np.save(tmp_path / "small.npy", np.zeros((1, 4, 8, 8), np.float32))
    np.save(tmp_path / "noise.npy", np.zeros((2, 1, 4, 8, 8), np.float32))
    return tmp_path


def _cases(images, npy):
    image, mask16 = str(images / "image.png"), str(images / "mask16.png")
    return [
        ("text-to-image", ["--model_path", str(npy / "no-such-model")], "--model_path", "does not exist"),
        ("text-guide-img-to-img", ["--image", str(npy / "missing.png")], "--image", "not found"),
        ("text-guide-image-inpainting", ["--image", image, "--mask_image", mask16], "--mask_image is 16x16", "mask of"),
        ("text-to-image", ["--sampler", "dpm_fast"], "--sampler", "choose from"),
        ("text-to-image", ["--num_inference_steps", "0"], "--num_inference_steps", "at least 1"),
        ("text-to-image", ["--height", "36"], "--height 36", "multiple of 8"),
        ("text-to-image", ["--init_latent_path", str(npy / "small.npy")], "(1, 4, 16, 16)", "(1, 4, 8, 8)"),
        ("text-to-image", ["--sampler", "euler_a", "--init_noise_path", str(npy / "noise.npy")], "(draws, 1, 4, 16, 16)", "(2, 1, 4, 8, 8)"),
        ("text-to-image", ["--init_latent_path", str(npy / "missing.npy")], "--init_latent_path", "not found"),
        ("text-to-image", ["--sampler", "euler", "--init_noise_path", str(npy / "noise.npy")], "--init_noise_path", "euler_a"),
        ("text-to-image", ["--sampler", "ddim", "--init_noise_path", str(npy / "noise.npy")], "--eta", "deterministic"),
        ("unconditional-image-generation", ["--sampler", "euler"], "--sampler euler", "use ddpm"),
        ("sdxl-refiner", ["--image", image, "--strength", "0.3"], "--num_inference_steps 2", "use --num_inference_steps 4"),
        ("lora", ["--lora_path", f"{image}:nan"], "scale nan is not a finite number", f"{image}:0.8"),
        ("lora", ["--lora_path", str(npy / "missing.safetensors")], "--lora_path", "not found"),
    ]  # fmt: skip


def test_bad_inputs_fail_with_one_line(images, npy, capsys):
    for name, flags, problem, fix in _cases(images, npy):
        line = script_error(name, capsys, *FAST, *flags, "--output_dir", str(npy / "out"))
        assert problem in line and fix in line and "; " in line, (name, flags, line)
