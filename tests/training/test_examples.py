"""Each training example end to end on tiny models (CPU, offline): trains, saves, reloads through stock diffusers."""

from __future__ import annotations

import pytest
import torch

from .helpers import EXAMPLES, assert_summary, tiny_path, train


@pytest.mark.slow
@pytest.mark.parametrize("script,kind,pipe_cls", [
    ("train_text_to_image.py", "sd15", "StableDiffusionPipeline"),
    ("train_text_to_image_sdxl.py", "sdxl", "StableDiffusionXLPipeline"),
])  # fmt: skip
def test_full_finetune_saves_a_reloadable_pipeline(tmp_path, shapes, script, kind, pipe_cls):
    import diffusers

    proc = train(script, tmp_path / "out", shapes, "--pretrained_model_name_or_path", f"tiny:{kind}", "--use_ema")
    assert_summary(proc.stdout, 2)
    cls = getattr(diffusers, pipe_cls)
    trained = cls.from_pretrained(tmp_path / "out")
    initial = cls.from_pretrained(tiny_path(kind))
    changed = [k for k, v in trained.unet.state_dict().items() if not torch.equal(v, initial.unet.state_dict()[k])]
    assert changed, "training did not change the UNet"
    frozen = trained.vae.state_dict()
    assert all(torch.equal(v, initial.vae.state_dict()[k]) for k, v in frozen.items()), "the VAE must stay frozen"
    images = trained(["a red circle"], num_inference_steps=2, height=32, width=32, output_type="np").images
    assert images.shape == (1, 32, 32, 3)


@pytest.mark.slow
@pytest.mark.parametrize("script,kind,pipe_cls", [
    ("train_text_to_image_lora.py", "sd15", "StableDiffusionPipeline"),
    ("train_text_to_image_lora_sdxl.py", "sdxl", "StableDiffusionXLPipeline"),
])  # fmt: skip
def test_lora_reloads_through_stock_diffusers_and_changes_output(tmp_path, shapes, script, kind, pipe_cls):
    import diffusers

    proc = train(script, tmp_path / "out", shapes, "--pretrained_model_name_or_path", f"tiny:{kind}", "--rank", "4")
    assert_summary(proc.stdout, 2)
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    pipe = getattr(diffusers, pipe_cls).from_pretrained(tiny_path(kind))

    def sample():
        g = torch.Generator().manual_seed(0)
        return pipe("a blue square", num_inference_steps=2, height=32, width=32, generator=g, output_type="np").images

    before = sample()
    pipe.load_lora_weights(str(tmp_path / "out"))
    after = sample()
    assert not torch.allclose(torch.from_numpy(before), torch.from_numpy(after), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("recipe_name,kind,text_encoder", [
    ("SDLoRARecipe", "sd15", False), ("SDXLLoRARecipe", "sdxl", False),
    ("SDLoRARecipe", "sd15", True), ("SDXLLoRARecipe", "sdxl", True),
])  # fmt: skip
def test_lora_reloads_at_its_scale_with_its_text_encoder_lora(tmp_path, shapes, recipe_name, kind, text_encoder):
    """--lora_alpha 16 with --rank 4 (scale 4), with and without --train_text_encoder: stock load_lora_weights on
    the saved file reproduces the live trained model, since the file's metadata carries alpha and the text-encoder
    LoRA sits under the names stock diffusers expects; the same tensors without metadata (scale 1) do not."""
    from safetensors.torch import load_file

    from diffusers_npu.training import args, loop
    from diffusers_npu.training.recipes import sd, sdxl

    recipe_cls = getattr(sd, recipe_name, None) or getattr(sdxl, recipe_name)
    argv = ["--train_data_dir", str(shapes), "--output_dir", str(tmp_path / "out"), "--resolution", "32",
            "--train_batch_size", "2", "--max_train_steps", "4", "--learning_rate", "1e-2",
            "--checkpointing_steps", "1000", "--rank", "4", "--lora_alpha", "16",
            *(["--train_text_encoder"] if text_encoder else [])]  # fmt: skip
    cfg = args.parse_recipe_args(recipe_cls, "test", f"tiny:{kind}", argv)
    recipe = recipe_cls(cfg)
    loop.run(recipe, cfg)

    def sample(pipe):
        g = torch.Generator().manual_seed(0)
        return torch.from_numpy(pipe("a blue square", num_inference_steps=2, height=32, width=32, generator=g,
                                     output_type="np").images)  # fmt: skip

    live = sample(recipe.validation_pipeline(recipe.trainable_model().eval()))
    weights = load_file(tmp_path / "out" / "pytorch_lora_weights.safetensors")
    prefixes = {k.split(".")[0] for k in weights}
    expected = {"unet"} | (
        {"text_encoder"} | ({"text_encoder_2"} if kind == "sdxl" else set()) if text_encoder else set()
    )
    assert prefixes == expected, prefixes
    stock_cls = recipe.pipeline_cls
    reloaded = stock_cls.from_pretrained(tiny_path(kind))
    reloaded.load_lora_weights(str(tmp_path / "out"))
    torch.testing.assert_close(sample(reloaded), live, atol=1e-4, rtol=0)
    no_metadata = stock_cls.from_pretrained(tiny_path(kind))
    no_metadata.load_lora_weights(weights)
    assert (sample(no_metadata) - live).abs().max() > 1e-3
    if text_encoder:  # the text-encoder LoRA itself matters: with it switched off the image changes
        for encoder in recipe.text_encoders:
            encoder.disable_adapters()
        assert (sample(recipe.validation_pipeline(recipe.trainable_model())) - live).abs().max() > 1e-4


def run_main(script: str, argv: list[str], capsys) -> tuple[int, str]:
    """Run an example's main() in-process; returns (exit code, stderr)."""
    import runpy

    module = runpy.run_path(str(EXAMPLES / script), run_name="example")
    with pytest.raises(SystemExit) as info:
        module["main"](argv)
    return info.value.code, capsys.readouterr().err


BAD_INPUTS = {
    "missing dataset": (["--train_data_dir", "/nonexistent/data"], "--train_data_dir"),
    "wrong column": (["--image_column", "picture"], "--image_column"),
    "unknown model dir": (
        ["--pretrained_model_name_or_path", "/nonexistent/model"],
        "--pretrained_model_name_or_path",
    ),
    "fp16 on cpu": (["--mixed_precision", "fp16"], "fp16 is not supported on cpu"),
    "optimizer extra missing": (["--use_npu_fuse_adamW"], "pip install torch-npu=="),
    "resolution not multiple of 8": (["--resolution", "30"], "multiple of 8"),
    "tracker not installed": (["--report_to", "wandb"], "--report_to wandb needs wandb: pip install wandb"),
    "resume from missing checkpoint": (["--resume_from_checkpoint", "checkpoint-7"], "does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_with_one_line(tmp_path, shapes, capsys, case):
    extra, expect = BAD_INPUTS[case]
    argv = ["--train_data_dir", str(shapes), "--output_dir", str(tmp_path / "out"), "--resolution", "32",
            "--max_train_steps", "1", *extra]  # fmt: skip
    code, err = run_main("train_text_to_image.py", argv, capsys)
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and expect in lines[0], err[-2000:]
    assert not (tmp_path / "out" / "model_index.json").exists()


def test_corrupt_image_names_the_image(tmp_path, capsys):
    from diffusers_npu.training.data import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "shapes", num_images=4, resolution=32)
    sorted(data.glob("*.png"))[1].write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    argv = [
        "--train_data_dir",
        str(data),
        "--output_dir",
        str(tmp_path / "out"),
        "--resolution",
        "32",
        "--max_train_steps",
        "2",
    ]
    code, err = run_main("train_text_to_image.py", argv, capsys)
    # named by its path before the first step (training/image_check.py), not mid-epoch by its index
    assert code == 2 and "1 training image(s) unreadable" in err and "00001.png" in err, err[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_text_to_image.py", "train_text_to_image_sdxl.py"])
def test_separate_vae_is_trained_with_and_saved(tmp_path, shapes, script):
    from diffusers import AutoencoderKL

    from diffusers_npu import tiny

    other = tiny.save_tiny("sd15", tmp_path / "other", seed=1) / "vae"  # a VAE folder: config.json, no model_index
    train(script, tmp_path / "out", shapes, "--pretrained_vae_model_name_or_path", str(other), steps=1)
    saved, wanted = (AutoencoderKL.from_pretrained(p).state_dict() for p in (tmp_path / "out" / "vae", other))
    assert all(torch.equal(saved[k], wanted[k]) for k in wanted)
