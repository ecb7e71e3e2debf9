"""Bad inputs a careless user types, per entry point: each exits non-zero with one ``error:`` line that names the
problem (no traceback), before any work, and nothing a user had is lost or overwritten."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "text_to_image" / "train_text_to_image.py"
LORA = ROOT / "examples" / "text_to_image" / "train_text_to_image_lora.py"
FLUX = ROOT / "examples" / "dreambooth" / "train_dreambooth_lora_flux.py"


def _error_line(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code not in (0, None), err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small bad files: a truncated safetensors, a text file, a NaN .npy, a broken YAML, a wrong-typed YAML."""
    d = tmp_path_factory.mktemp("bad")
    (d / "truncated.safetensors").write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    (d / "notes.txt").write_text("hello\n")
    np.save(d / "nan.npy", np.full((1, 4, 4, 4), np.nan, np.float32))
    (d / "broken.yaml").write_text("learning_rate: [1e-4\n")
    (d / "typed.yaml").write_text("train_batch_size: many\n")
    (d / "switch.yaml").write_text("use_ema: 3\n")
    (d / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    from PIL import Image

    Image.new("RGB", (32, 32), "gray").save(d / "image.png")
    return d


def _training_cases(shapes, files, out):
    sdxl = str(_tiny("sdxl"))
    return [
        (["--learning_rate", "inf"], "--learning_rate inf is not a finite number"),
        (["--learning_rate", "nan"], "is not a finite number"),
        (["--learning_rate", "-1"], "--learning_rate -1.0 must be > 0"),
        (["--adam_beta1", "2"], "--adam_beta1 and --adam_beta2 must be in [0, 1)"),
        (["--dataloader_num_workers", "-1"], "--dataloader_num_workers must be >= 0"),
        (["--logging_steps", "0"], "--logging_steps must be >= 1"),
        (["--seed", "-1"], "--seed / --validation_seed must be in [0, 2**32)"),
        (["--seed", str(2**70)], "--seed / --validation_seed must be in [0, 2**32)"),
        (["--validation_epochs", "0"], "--validation_epochs, --num_validation_images"),
        (["--num_validation_images", "0"], "--validation_epochs, --num_validation_images"),
        (["--torch_compile", "nosuchbackend"], "--torch_compile 'nosuchbackend' is not a torch.compile backend"),
        (["--checkpoints_total_limit", "-1"], "--checkpoints_total_limit -1 must be >= 1"),
        (["--config", str(files / "broken.yaml")], "is not valid YAML"),
        (["--config", str(files / "typed.yaml")], "train_batch_size 'many' is not a valid value"),
        (["--config", str(files / "switch.yaml")], "use_ema is a switch"),
        (["--pretrained_model_name_or_path", sdxl], "is a StableDiffusionXLPipeline model; this script trains StableDiffusionPipeline"),
        (["--output_dir", str(files / "notes.txt")], "is a file; pass a folder"),
    ]  # fmt: skip


def _tiny(kind):
    from diffusers_npu import tiny

    return tiny.tiny_model_path(kind)


def test_training_script_bad_inputs(tmp_path, shapes_small, files, capsys):
    main = runpy.run_path(str(TRAIN), run_name="example")["main"]
    common = ["--train_data_dir", str(shapes_small), "--resolution", "32", "--max_train_steps", "1"]
    for extra, expected in _training_cases(shapes_small, files, tmp_path):
        out = tmp_path / f"out{abs(hash(tuple(extra)))}"
        argv = [*common, "--output_dir", str(out), *extra]
        line = _error_line(main, argv, capsys)
        assert expected in line, (extra, line)
        assert not any(out.glob("checkpoint-*")) and not (out / "unet").exists(), "no work may have been done"


def test_a_damaged_model_folder_and_a_foreign_checkpoint_are_one_line(tmp_path, shapes_small, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(_tiny("sd15"), model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    main = runpy.run_path(str(TRAIN), run_name="example")["main"]
    common = ["--train_data_dir", str(shapes_small), "--resolution", "32", "--max_train_steps", "1"]
    line = _error_line(
        main, [*common, "--output_dir", str(tmp_path / "a"), "--pretrained_model_name_or_path", str(model)], capsys
    )
    assert "could not be loaded" in line and "--pretrained_model_name_or_path" in line, line
    # A full fine-tune's checkpoint resumed by the LoRA script, and a checkpoint of the right size but garbage bytes.
    out = tmp_path / "full"
    main([*common, "--output_dir", str(out), "--checkpointing_steps", "1"])
    capsys.readouterr()
    lora = runpy.run_path(str(LORA), run_name="example")["main"]
    resume = [*common, "--output_dir", str(out), "--max_train_steps", "2", "--resume_from_checkpoint", "latest"]
    line = _error_line(lora, resume, capsys)
    assert "written with other settings: recipe 'SDRecipe' -> 'SDLoRARecipe'" in line, line
    line = _error_line(lora, [*resume, "--allow_changed_settings"], capsys)  # and even when changes are allowed
    assert "was written by a full fine-tune" in line, line
    state = out / "checkpoint-1" / "model.safetensors"
    state.write_bytes(b"\xff" * state.stat().st_size)
    line = _error_line(
        main,
        [*common, "--output_dir", str(out), "--max_train_steps", "2", "--resume_from_checkpoint", "latest"],
        capsys,
    )
    assert "does not restore into this run" in line, line
    manifest = out / "checkpoint-1" / "checkpoint.json"
    manifest.write_text(json.dumps([1, 2]))
    line = _error_line(
        main,
        [*common, "--output_dir", str(out), "--max_train_steps", "2", "--resume_from_checkpoint", "latest"],
        capsys,
    )
    assert "corrupt checkpoint.json" in line, line


def test_flux_training_bad_numbers(tmp_path, shapes_small, capsys):
    main = runpy.run_path(str(FLUX), run_name="example")["main"]
    argv = ["--instance_data_dir", str(shapes_small), "--instance_prompt", "sks", "--output_dir", str(tmp_path),
            "--resolution", "32", "--guidance_scale", "nan"]  # fmt: skip
    assert "--guidance_scale nan is not a finite number" in _error_line(main, argv, capsys)


def _flux_lora(folder: Path) -> Path:
    """A FLUX transformer LoRA file (keys ``transformer.*``), as FluxPipeline.save_lora_weights writes them."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    key = "transformer.transformer_blocks.0.attn.to_q"
    save_file({f"{key}.lora_A.weight": torch.zeros(4, 32), f"{key}.lora_B.weight": torch.zeros(32, 4)},
              str(folder / "pytorch_lora_weights.safetensors"))  # fmt: skip
    return folder


def test_inference_bad_inputs(tmp_path, files, capsys):
    from tests.inference.helpers import FAST, script_main

    flux_lora = _flux_lora(tmp_path / "flux_lora")

    cases = [
        ("text-to-image", ["--guidance_scale", "nan"], "--guidance_scale nan is not a finite number"),
        ("text-to-image", ["--eta", "nan"], "--eta nan is not a finite number"),
        ("text-to-image", ["--init_latent_path", str(files / "nan.npy")], "holds NaN or inf values"),
        ("text-to-image", ["--prompts_file", str(files)], "cannot be read as UTF-8 text"),
        ("text-to-image", ["--prompts_file", str(files / "latin1.txt")], "cannot be read as UTF-8 text"),
        ("text-to-image", ["--output_dir", str(files / "notes.txt")], "is a file; pass a folder"),
        (
            "sdxl-base",
            ["--model_path", str(_tiny("sd15"))],
            "is a StableDiffusionPipeline model; this task runs StableDiffusionXLPipeline",
        ),
        ("flux-lora", ["--model_path", str(_tiny("sd15")), "--lora_path", str(files)], "this task runs FluxPipeline"),
        (
            "text-guide-depth-to-image",
            ["--model_path", str(_tiny("sd15")), "--image", str(files / "image.png")],
            "this task needs a StableDiffusionDepth2ImgPipeline",
        ),
        ("unconditional-image-generation", ["--model_path", str(_tiny("sd15"))], "this task needs a DDPMPipeline"),
        (
            "text-to-image",
            ["--unet_path", str(_tiny("sd15") / "vae")],
            "holds a AutoencoderKL, not a UNet2DConditionModel",
        ),
        ("text-to-image", ["--lora_path", str(flux_lora)], "it is a LoRA for another model"),
        (
            "flux-lora",
            ["--lora_path", str(flux_lora), "--sampler", "euler"],
            "samples with its flow-matching scheduler",
        ),
    ]
    for name, flags, expected in cases:
        argv = [*FAST, "--output_dir", str(tmp_path / "out"), *flags]
        line = _error_line(script_main(name), argv, capsys)
        assert expected in line, (name, flags, line)


def test_tools_never_overwrite_their_input_and_refuse_bad_files(tmp_path, files, capsys):
    from diffusers_npu.cli import main
    from diffusers_npu.training.data import main as data_main

    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"not a checkpoint")
    before = ckpt.read_bytes()
    line = _error_line(main, ["convert", "ckpt-to-safetensors", str(ckpt), str(ckpt)], capsys)
    assert "is also the input" in line and ckpt.read_bytes() == before, line
    line = _error_line(
        main,
        ["convert", "safetensors-to-ckpt", str(files / "truncated.safetensors"), str(tmp_path / "o.ckpt")],
        capsys,
    )
    assert "truncated.safetensors" in line, line
    line = _error_line(main, ["convert", "lora-to-kohya", str(files / "truncated.safetensors"), str(tmp_path)], capsys)
    assert "is a folder" in line or "not a readable" in line, line
    line = _error_line(
        main, ["compare", str(files / "notes.txt"), str(files / "notes.txt"), "--threshold", "nan"], capsys
    )
    assert "--threshold nan must be a number >= 0" in line, line
    line = _error_line(main, ["convert", "sdxl-to-single-file", "tiny:sd15", str(tmp_path / "sd.safetensors")], capsys)
    assert "is a StableDiffusionPipeline model; this converter writes StableDiffusionXLPipeline" in line, line
    user = tmp_path / "photos"
    user.mkdir()
    (user / "mine.png").write_bytes(b"precious")
    line = _error_line(data_main, ["shapes", str(user)], capsys)
    assert "is not an empty folder" in line and (user / "mine.png").read_bytes() == b"precious"


@pytest.mark.parametrize("flags,expected", [
    (["--nproc=abc"], "--nproc=abc must be a positive integer"),
    (["--nproc=0"], "--nproc=0 must be a positive integer"),
    (["--batch_size=x"], "--batch_size=x must be a positive integer"),
    (["--output_dir"], "--output_dir needs a value"),
])  # fmt: skip
def test_launcher_bad_arguments(flags, expected):
    launcher = ROOT / "test" / "train_full_1p_text_to_image.sh"
    proc = subprocess.run(["bash", str(launcher), "--tiny", *flags], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {expected}"), proc.stderr


def test_launcher_takes_space_separated_values(tmp_path):
    launcher = ROOT / "test" / "train_full_1p_text_to_image.sh"
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(launcher), "--tiny", "--output_dir", str(out), "--max_train_steps", "1"],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "train.log").is_file() and "steps=1" in (out / "train.log").read_text()


def test_damaged_datasets_embeddings_and_package_files_are_one_line(tmp_path, files, capsys):
    from tests.inference.helpers import FAST, script_main

    data = tmp_path / "parquet"
    data.mkdir()
    (data / "train.parquet").write_bytes(b"PAR1 this is not parquet")
    main = runpy.run_path(str(TRAIN), run_name="example")["main"]
    line = _error_line(
        main, ["--train_data_dir", str(data), "--output_dir", str(tmp_path / "o"), "--resolution", "32"], capsys
    )
    assert "holds a damaged saved dataset or parquet file" in line, line
    line = _error_line(script_main("textual-inversion"), [*FAST, "--model_path", str(_tiny("sdxl")), "--output_dir",
                       str(tmp_path / "ti"), "--textual_inversion_path", str(files / "truncated.safetensors")], capsys)  # fmt: skip
    assert "--textual_inversion_path" in line and "not a readable safetensors file" in line, line
    target = tmp_path / "site"
    (target / "accelerate").mkdir(parents=True)
    (target / "accelerate" / "__init__.py").write_bytes(b"__version__ = '0.20.3'\n# \xff\xfe\n")
    proc = subprocess.run([sys.executable, str(ROOT / "patches" / "apply.py"), "--check", "--target", str(target)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
