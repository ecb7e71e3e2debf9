"""Single-file models in: an SDXL checkpoint file (made here from tiny:sdxl) trains and samples like the folder it
came from; a missing config offline, or a file of the wrong family, is one line naming the flag."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffusers_npu.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "tiny_sdxl.safetensors"
    assert main(["convert", "sdxl-to-single-file", "tiny:sdxl", str(out)]) == 0
    return out


@pytest.mark.slow
def test_training_from_a_single_file_equals_training_from_its_folder(tmp_path, sdxl_file):
    from diffusers_npu.training.data import make_shapes_dataset
    from tests.training.helpers import train

    data = make_shapes_dataset(tmp_path / "data", num_images=4, resolution=32)
    flags = ("--rank", "4", "--learning_rate", "1e-2")
    train(
        "train_text_to_image_lora_sdxl.py",
        tmp_path / "folder",
        data,
        "--pretrained_model_name_or_path",
        "tiny:sdxl",
        *flags,
    )
    proc = train("train_text_to_image_lora_sdxl.py", tmp_path / "file", data, "--pretrained_model_name_or_path",
                 str(sdxl_file), "--single_file_config", "tiny:sdxl", *flags)  # fmt: skip
    a, b = (load_file(tmp_path / d / "pytorch_lora_weights.safetensors") for d in ("folder", "file"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), proc.stderr[-2000:]
    assert (tmp_path / "file" / "single_file_pretrained_model_name_or_path" / "model_index.json").is_file()


def test_inference_from_a_single_file_gives_the_folders_image(tmp_path, sdxl_file):
    from tests.inference.helpers import FAST, pngs, run_script

    run_script("sdxl-base", tmp_path / "folder", *FAST, "--model_path", "tiny:sdxl")
    run_script(
        "sdxl-base", tmp_path / "file", *FAST, "--model_path", str(sdxl_file), "--single_file_config", "tiny:sdxl"
    )
    a, b = (pngs(tmp_path / d)["p0000_s0.png"] for d in ("folder", "file"))
    np.testing.assert_array_equal(a, b)


def test_single_file_mistakes_are_one_line(tmp_path, sdxl_file, capsys, monkeypatch):
    from tests.inference.helpers import FAST, script_error

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = script_error("sdxl-base", capsys, *FAST, "--model_path", str(sdxl_file), "--output_dir", str(tmp_path))
    assert "--single_file_config" in line and "offline" in line, line
    from tests.training.test_examples import run_main

    code, err = run_main("train_text_to_image.py", ["--pretrained_model_name_or_path", str(sdxl_file),
                         "--single_file_config", "tiny:sdxl", "--output_dir", str(tmp_path / "o")], capsys)  # fmt: skip
    assert code == 2 and "is an SDXL single-file model; this script trains StableDiffusionPipeline" in err, err
