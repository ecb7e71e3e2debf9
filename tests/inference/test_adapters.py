"""LoRA (scale 0 equals no LoRA) and textual inversion (only prompts with the token change)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_npu import tiny

from .helpers import FAST, pngs, run_script

# diffusers' schedulers hand torch tensors to numpy (numpy 2 __array__ DeprecationWarnings), thousands per run.
pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")


def make_lora(kind: str, out: Path, rank: int = 4, seed: int = 0) -> Path:
    """A random (non-zero) LoRA on the tiny ``kind`` UNet, saved with diffusers' ``save_lora_weights``."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny.tiny_model_path(kind) / "unet")
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                        init_lora_weights=False)  # fmt: skip
    unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    cls = diffusers.StableDiffusionXLPipeline if kind == "sdxl" else diffusers.StableDiffusionPipeline
    cls.save_lora_weights(out, unet_lora_layers=layers)
    return out


def make_embedding(path: Path, token: str = "<cat-toy>") -> Path:
    """A learned-embeds file in the sd-concepts-library layout ({token: vector}) for the tiny CLIP (hidden 32)."""
    from safetensors.torch import save_file

    save_file({token: torch.randn(32, generator=torch.Generator().manual_seed(0))}, str(path))
    return path


def test_lora_scale_zero_equals_no_lora(tmp_path):
    lora = str(make_lora("sdxl", tmp_path / "lora"))
    run_script("sdxl-base", tmp_path / "none", *FAST)
    run_script("lora", tmp_path / "zero", *FAST, "--lora_path", lora, "--lora_scale", "0")
    run_script("lora", tmp_path / "one", *FAST, "--lora_path", lora, "--lora_scale", "1")
    none, zero, one = (pngs(tmp_path / d)["p0000_s0.png"] for d in ("none", "zero", "one"))
    np.testing.assert_array_equal(zero, none)
    assert not np.array_equal(one, none)


def test_lcm_runs_four_steps_with_a_lora(tmp_path):
    lora = str(make_lora("sdxl", tmp_path / "lora"))
    flags = ("--sampler", "LCMSampler", "--num_inference_steps", "4", "--guidance_scale", "1.5")
    record = run_script("lora", tmp_path / "out", *FAST, *flags, "--lora_path", lora)
    assert record["resolved"]["scheduler"] == "LCMScheduler"
    assert record["timing"]["median"]["unet_steps"] == 4


def test_lora_on_sd15_through_text_to_image(tmp_path):
    lora = str(make_lora("sd15", tmp_path / "lora"))
    run_script("text-to-image", tmp_path / "none", *FAST)
    run_script("text-to-image", tmp_path / "zero", *FAST, "--lora_path", lora, "--lora_scale", "0")
    run_script("text-to-image", tmp_path / "one", *FAST, "--lora_path", lora)
    none, zero, one = (pngs(tmp_path / d)["p0000_s0.png"] for d in ("none", "zero", "one"))
    np.testing.assert_array_equal(zero, none)
    assert not np.array_equal(one, none)


def test_several_loras_combine_at_their_own_scales_and_kohya_files_load(tmp_path):
    from diffusers_npu.cli import main

    a, b = (str(make_lora("sd15", tmp_path / name, seed=seed)) for name, seed in (("a", 0), ("b", 1)))
    runs = {
        "a": ["--lora_path", f"{a}:0.8"],
        "b": ["--lora_path", f"{b}:0.5"],
        "ab": ["--lora_path", f"{a}:0.8", "--lora_path", f"{b}:0.5"],
        "a_b0": ["--lora_path", f"{a}:0.8", "--lora_path", f"{b}:0"],
        "a_default": ["--lora_path", a, "--lora_scale", "0.8"],
    }
    assert main(["convert", "lora-to-kohya", a, str(tmp_path / "a_kohya.safetensors")]) == 0
    runs["kohya"] = ["--lora_path", f"{tmp_path / 'a_kohya.safetensors'}:0.8"]
    images = {}
    for name, flags in runs.items():
        run_script("text-to-image", tmp_path / name, *FAST, *flags)
        images[name] = pngs(tmp_path / name)["p0000_s0.png"].astype(int)
    assert not np.array_equal(images["ab"], images["a"]) and not np.array_equal(images["ab"], images["b"])
    np.testing.assert_array_equal(images["a_b0"], images["a"])  # scale 0: the second LoRA adds nothing
    np.testing.assert_array_equal(images["a_default"], images["a"])  # --lora_scale for paths without :SCALE
    assert np.abs(images["kohya"] - images["a"]).max() <= 1  # the same LoRA from its kohya file


def test_textual_inversion_changes_only_prompts_with_the_token(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a backpack\na <cat-toy> backpack\n")
    emb = str(make_embedding(tmp_path / "cat-toy.safetensors"))
    common = (*FAST, "--prompts_file", str(prompts), "--batch_size", "2")
    run_script("text-to-image", tmp_path / "plain", *common)
    run_script("textual-inversion", tmp_path / "ti", *common, "--textual_inversion_path", emb)
    plain, ti = pngs(tmp_path / "plain"), pngs(tmp_path / "ti")
    np.testing.assert_array_equal(ti["p0000_s0.png"], plain["p0000_s0.png"])  # no token: unchanged
    assert not np.array_equal(ti["p0001_s0.png"], plain["p0001_s0.png"])  # the token now means the embedding
