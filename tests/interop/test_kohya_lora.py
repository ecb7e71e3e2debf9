"""diffusers <-> kohya LoRA: stock load_lora_weights on the kohya file (and on the file converted back) gives the
same image as the diffusers file, alpha != rank included; a training run saves kohya directly."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffusers_npu import tiny
from diffusers_npu.cli import main

PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


def _pipeline(kind: str):
    import diffusers

    return getattr(diffusers, PIPELINES[kind]).from_pretrained(tiny.tiny_model_path(kind))


def _sample(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    out = pipe("a blue square", num_inference_steps=2, height=32, width=32, generator=g, output_type="np")
    return torch.from_numpy(out.images)


def _diffusers_lora(kind: str, folder, rank: int = 4, alpha: int = 16, layout: str = "peft"):
    """A UNet LoRA with random B (so it changes the image) saved as diffusers does, with its metadata, in PEFT's
    key names or diffusers' (``lora.down``, as its training scripts write); returns the live pipeline's image."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from diffusers_npu.training.recipes.common import lora_config

    pipe = _pipeline(kind)
    pipe.unet.add_adapter(lora_config(rank, alpha))
    torch.manual_seed(0)
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    layers = get_peft_model_state_dict(pipe.unet)
    layers = convert_state_dict_to_diffusers(layers) if layout == "diffusers" else layers
    type(pipe).save_lora_weights(folder, unet_lora_layers=layers,
                                 unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict())  # fmt: skip
    return _sample(pipe)


@pytest.mark.parametrize(
    "kind,layout", [("sd15", "peft"), ("sdxl", "peft"), ("sd15", "diffusers"), ("sdxl", "diffusers")]
)
def test_kohya_round_trip_gives_the_same_image(tmp_path, kind, layout):
    live = _diffusers_lora(kind, tmp_path / "diffusers", layout=layout)
    kohya = tmp_path / "kohya.safetensors"
    assert main(["convert", "lora-to-kohya", str(tmp_path / "diffusers"), str(kohya)]) == 0
    tensors = load_file(kohya)
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)
    alphas = {k: v for k, v in tensors.items() if k.endswith(".alpha")}
    assert alphas and all(float(v) == 16.0 for v in alphas.values())  # the file's alpha, not the rank
    from_kohya = _pipeline(kind)
    from_kohya.load_lora_weights(str(kohya))
    torch.testing.assert_close(_sample(from_kohya), live, atol=1e-5, rtol=0)
    back = tmp_path / "back"
    assert (
        main(["convert", "kohya-to-lora", str(kohya), str(back), "--pretrained_model_name_or_path", f"tiny:{kind}"])
        == 0
    )
    with safe_open(back / "pytorch_lora_weights.safetensors", "pt") as f:
        assert all(k.startswith("unet.") and ".lora_" in k for k in f.keys())
    reloaded = _pipeline(kind)
    reloaded.load_lora_weights(str(back))
    torch.testing.assert_close(_sample(reloaded), live, atol=1e-5, rtol=0)
    assert (_sample(_pipeline(kind)) - live).abs().max() > 1e-3  # the LoRA changes the image at all


def test_bad_conversions_are_one_line_errors(tmp_path, capsys):
    _diffusers_lora("sd15", tmp_path / "lora")
    file = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    before = file.read_bytes()
    capsys.readouterr()
    cases = [
        (["convert", "lora-to-kohya", str(file), str(file)], "is also the input"),
        (["convert", "lora-to-kohya", str(tmp_path / "missing.safetensors"), str(tmp_path / "k.safetensors")], "not a readable"),
        (["convert", "kohya-to-lora", str(tmp_path / "missing.safetensors"), str(tmp_path / "o"),
          "--pretrained_model_name_or_path", "tiny:sd15"], "is not a file"),
    ]  # fmt: skip
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert info.value.code != 0 and message in err and len(err.splitlines()) == 1, err
    assert file.read_bytes() == before


@pytest.mark.slow
def test_training_saves_a_kohya_file_stock_diffusers_loads(tmp_path):
    from diffusers_npu.training.data import make_shapes_dataset
    from tests.training.helpers import train

    data = make_shapes_dataset(tmp_path / "data", num_images=8, resolution=32)
    train("train_text_to_image_lora_sdxl.py", tmp_path / "out", data, "--rank", "4", "--lora_alpha", "8",
          "--lora_format", "kohya", "--learning_rate", "1e-2", "--checkpointing_steps", "2")  # fmt: skip
    for folder in (tmp_path / "out", tmp_path / "out" / "checkpoint-2"):
        tensors = load_file(folder / "pytorch_lora_weights.safetensors")
        assert all(k.startswith("lora_unet_") for k in tensors)
        assert {float(v) for k, v in tensors.items() if k.endswith(".alpha")} == {8.0}
    pipe = _pipeline("sdxl")
    before = _sample(pipe)
    pipe.load_lora_weights(str(tmp_path / "out"))
    assert (_sample(pipe) - before).abs().max() > 0
