"""Every test_infer/ script on its tiny default model: the right images, a complete JSON record, timings."""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

from diffusers_npu import tiny
from diffusers_npu.inference.args import InferConfig

from .helpers import FAST, SCRIPTS, pngs, run_script

# diffusers' schedulers hand torch tensors to numpy (numpy 2 __array__ DeprecationWarnings), thousands per run.
pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")


REFERENCE = {"text-to-image", "text-guide-img-to-img", "text-guide-image-inpainting", "textual-inversion",
             "text-guide-depth-to-image", "unconditional-image-generation"}  # fmt: skip
SCRIPT_NAMES = sorted(REFERENCE | {"sdxl-base", "sdxl-refiner", "sdxl-pipeline", "lora"})


def _inputs(name: str, images, tmp_path) -> list[str]:
    """The flags a script needs beyond the defaults (input images, a LoRA, an embedding)."""
    if name in ("text-guide-img-to-img", "text-guide-depth-to-image", "sdxl-refiner"):
        return ["--image", str(images / "image.png"), "--strength", "1.0"]
    if name == "text-guide-image-inpainting":
        return ["--image", str(images / "image.png"), "--mask_image", str(images / "mask.png")]
    if name == "lora":
        from .test_adapters import make_lora

        return ["--lora_path", str(make_lora("sdxl", tmp_path / "lora"))]
    if name == "textual-inversion":
        from .test_adapters import make_embedding

        return ["--textual_inversion_path", str(make_embedding(tmp_path / "emb.safetensors"))]
    return []


def test_the_reference_scripts_exist_and_each_has_a_task():
    from diffusers_npu.inference.pipelines import TASKS

    scripts = {p.stem for p in SCRIPTS.glob("*.py")}
    assert set(SCRIPT_NAMES) <= scripts
    assert scripts <= set(TASKS), "every test_infer/ script names a task in inference.pipelines.TASKS"


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_writes_prompts_x_images_of_the_right_size(name, images, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n")  # blank lines are skipped
    text = [] if name == "unconditional-image-generation" else ["--prompts_file", str(prompts), "--batch_size", "2"]
    steps = ["--num_inference_steps", "4"] if name == "sdxl-pipeline" else []
    out = tmp_path / "out"
    record = run_script(
        name, out, *FAST, *steps, *text, "--num_images_per_prompt", "2", *_inputs(name, images, tmp_path)
    )

    expected = {"p0000_s0.png", "p0000_s1.png"} | (set() if not text else {"p0001_s0.png", "p0001_s1.png"})
    written = pngs(out)
    assert set(written) == expected
    assert all(image.shape == (32, 32, 3) for image in written.values())
    assert [r["file"] for r in record["images"]] == sorted(expected)
    assert set(record["params"]) == {f.name for f in dataclasses.fields(InferConfig)}
    median = record["timing"]["median"]
    assert median["s_per_img"] > 0 and median["unet_steps_per_s"] > 0 and "peak_mem_gib" in median
    assert record["timing"]["load_s"] > 0 and record["resolved"]["scheduler"]


def test_sdxl_pipeline_splits_steps_between_base_and_refiner(tmp_path):
    record = run_script("sdxl-pipeline", tmp_path, *FAST, "--num_inference_steps", "4", "--high_noise_frac", "0.8")
    # Leading timesteps 751, 501, 251, 1: the base runs t >= 200 (3 steps), the refiner the last one.
    assert record["timing"]["median"]["unet_steps"] == 4


def test_benchmark_reports_the_median_of_repeats(tmp_path):
    record = run_script("text-to-image", tmp_path, *FAST, "--sampler", "euler", "--benchmark", "3")
    repeats = record["timing"]["repeats"]
    assert len(repeats) == 3 and all(r["unet_steps"] == 2 for r in repeats)
    assert record["timing"]["median"]["s_per_img"] == statistics.median(r["s_per_img"] for r in repeats)


def test_attention_kernel_and_unet_path_and_safety_flag(tmp_path):
    run_script("text-to-image", tmp_path / "a", *FAST)
    reference = pngs(tmp_path / "a")
    unet = str(tiny.tiny_model_path("sd15") / "unet")
    run_script("text-to-image", tmp_path / "b", *FAST, "--unet_path", unet, "--disable_safety_checker")
    assert all(np.array_equal(reference[k], v) for k, v in pngs(tmp_path / "b").items())
    run_script("text-to-image", tmp_path / "c", *FAST, "--attention", "math")
    for key, image in pngs(tmp_path / "c").items():  # another kernel: equal up to float rounding
        assert np.abs(image.astype(int) - reference[key]).max() <= 2


@pytest.mark.slow
def test_script_runs_standalone_and_fails_with_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(SCRIPTS / "text-to-image.py"), *FAST]
    ok = subprocess.run([*cmd, "--output_dir", str(tmp_path)], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("task=text-to-image images=1 s_per_img=")
    bad = subprocess.run([*cmd, "--model_path", str(tmp_path / "missing")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert errors == [bad.stderr.strip().splitlines()[-1]] and "--model_path" in errors[0]
