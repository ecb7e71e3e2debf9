"""--init_latent_path / --init_noise_path / --dump_latents: same .npy inputs give bit-identical images on CPU,
different ones change them, and dumping does not change what diffusers would have drawn."""

from __future__ import annotations

import numpy as np
import pytest

from diffusers_npu.inference import noise

from .helpers import FAST, pngs, run_script

# diffusers' schedulers hand torch tensors to numpy (numpy 2 __array__ DeprecationWarnings), thousands per run.
pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")


STOCHASTIC = [
    ("text-to-image", ["--sampler", "euler_a"]),
    ("text-to-image", ["--sampler", "ddim", "--eta", "1"]),
    ("text-to-image", ["--sampler", "dpm++sde"]),
    ("text-to-image", ["--sampler", "dpm++2s-a"]),
    ("sdxl-pipeline", ["--sampler", "euler_a", "--num_inference_steps", "4"]),  # noise runs on into the refiner
]


@pytest.mark.parametrize("name,flags", STOCHASTIC, ids=lambda v: "-".join(v) if isinstance(v, list) else v)
def test_npy_latents_and_noise_reproduce_bit_identically(tmp_path, name, flags):
    run = [*FAST, *flags, "--num_images_per_prompt", "2"]
    run_script(name, tmp_path / "plain", *run)
    dumped = run_script(name, tmp_path / "dump", *run, "--dump_latents")
    assert dumped["dumps"] == [noise.LATENTS_FILE, noise.NOISE_FILE]
    latents, steps = tmp_path / "dump" / noise.LATENTS_FILE, tmp_path / "dump" / noise.NOISE_FILE
    assert np.load(latents).shape == (2, 4, 16, 16) and np.load(steps).shape[1:] == (2, 4, 16, 16)
    # Dumping draws exactly what diffusers draws: the images do not change.
    plain, dump = pngs(tmp_path / "plain"), pngs(tmp_path / "dump")
    assert all(np.array_equal(plain[k], dump[k]) for k in plain)

    # Another seed, the dumped .npy files: bit-identical images (seeds only name the files now).
    fixed = ["--init_latent_path", str(latents), "--init_noise_path", str(steps)]
    run_script(name, tmp_path / "again", *run, "--seed", "5", *fixed)
    again = pngs(tmp_path / "again")
    assert [np.array_equal(again[f"p0000_s{5 + k}.png"], dump[f"p0000_s{k}.png"]) for k in range(2)] == [True, True]

    # A different per-step noise file changes the output.
    other = tmp_path / "other_noise.npy"
    np.save(other, -np.load(steps))
    run_script(name, tmp_path / "noise2", *run, "--init_latent_path", str(latents), "--init_noise_path", str(other))
    assert not np.array_equal(pngs(tmp_path / "noise2")["p0000_s0.png"], dump["p0000_s0.png"])


def test_different_initial_latents_change_the_output(tmp_path):
    run = [*FAST, "--sampler", "euler"]
    dumped = run_script("text-to-image", tmp_path / "dump", *run, "--dump_latents")
    assert dumped["dumps"] == [noise.LATENTS_FILE]  # euler draws no per-step noise
    latents = np.load(tmp_path / "dump" / noise.LATENTS_FILE)
    np.save(tmp_path / "same.npy", latents)
    np.save(tmp_path / "other.npy", -latents)
    run_script(
        "text-to-image", tmp_path / "same", *run, "--seed", "9", "--init_latent_path", str(tmp_path / "same.npy")
    )
    run_script("text-to-image", tmp_path / "other", *run, "--init_latent_path", str(tmp_path / "other.npy"))
    np.testing.assert_array_equal(pngs(tmp_path / "same")["p0000_s9.png"], pngs(tmp_path / "dump")["p0000_s0.png"])
    assert not np.array_equal(pngs(tmp_path / "other")["p0000_s0.png"], pngs(tmp_path / "dump")["p0000_s0.png"])


def test_run_record_states_the_initial_noise_scaling(tmp_path):
    legacy = run_script("sdxl-base", tmp_path / "a", *FAST, "--sampler", "euler", "--discretization", "legacy")
    leading = run_script("sdxl-base", tmp_path / "b", *FAST, "--sampler", "euler", "--discretization", "diffusers")
    # MindONE's prepare_sampling_loop scale sqrt(1 + sigma_max^2), sigma_max = 14.6146 at t = 999
    assert legacy["resolved"]["init_noise_sigma"] == pytest.approx((1 + 14.6146**2) ** 0.5, rel=1e-4)
    assert leading["resolved"]["scheduler_config"]["timestep_spacing"] == "leading"
    assert leading["resolved"]["init_noise_sigma"] > 1  # sqrt(1 + sigma_max^2) on the leading grid
