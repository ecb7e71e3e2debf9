"""Validation during training: when it runs, the labelled grid, the EMA weights swapped in and restored (the run
trains exactly as without validation), and the grid and step scalars in a real TensorBoard event file."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from diffusers_npu.training import validation

PROMPTS = ("a red circle on a white background", "a blue square on a black background")


def _config(**kw):
    from diffusers_npu.training.config import TrainConfig

    return TrainConfig(**kw)


def test_prompts_from_flags_and_a_file_and_when_validation_is_due(tmp_path):
    file = tmp_path / "prompts.txt"
    file.write_text("one\n\ntwo\n")
    assert validation.prompts(_config(validation_prompt="zero", validation_prompts=[str(file)])) == [
        "zero",
        "one",
        "two",
    ]
    assert validation.prompts(_config(validation_prompts=["a", "b"])) == ["a", "b"]
    cfg = _config(validation_prompt="p", validation_steps=3, validation_epochs=2)
    assert [s for s in range(1, 10) if validation.due(cfg, s)] == [3, 6, 9]
    assert [e for e in range(4) if validation.due(cfg, 0, epoch_end=e)] == [1, 3]
    assert not validation.due(_config(validation_steps=1), 1)  # no prompt, no validation


def test_grid_has_a_row_per_prompt_with_its_label():
    rows = [[Image.new("RGB", (32, 32), c)] * 3 for c in ("red", "blue")]
    grid = validation.labelled_grid(rows, list(PROMPTS))
    assert grid.size == (160 + 3 * 32, 2 * 32)
    assert grid.getpixel((160 + 40, 10)) == (255, 0, 0) and grid.getpixel((160 + 70, 40)) == (0, 0, 255)
    label = grid.crop((0, 0, 160, 32)).convert("L")
    assert label.getextrema()[0] < 128, "the label's text is drawn"


@pytest.mark.slow
def test_validation_uses_the_ema_restores_the_weights_and_reaches_tensorboard(tmp_path, shapes, monkeypatch):
    from safetensors.torch import load_file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from diffusers_npu.training import args, loop
    from diffusers_npu.training.recipes.sd import SDRecipe

    seen = []
    make_pipeline = SDRecipe.validation_pipeline

    def spy(self, unet):
        live = [p.detach().clone() for p in unet.parameters()]
        seen.append(all(torch.equal(a, b.to(a.dtype)) for a, b in zip(live, self.ema.shadow_params)))
        return make_pipeline(self, unet)

    common = ["--train_data_dir", str(shapes), "--resolution", "32", "--train_batch_size", "2", "--max_train_steps",
              "4", "--checkpointing_steps", "1000", "--learning_rate", "1e-3", "--use_ema", "--ema_decay", "0.5"]  # fmt: skip
    plain = args.parse_recipe_args(SDRecipe, "t", "tiny:sd15", [*common, "--output_dir", str(tmp_path / "plain")])
    loop.run(SDRecipe(plain), plain)
    monkeypatch.setattr(SDRecipe, "validation_pipeline", spy)
    out = tmp_path / "validated"
    argv = [*common, "--output_dir", str(out), "--validation_prompts", *PROMPTS, "--validation_steps", "2",
            "--validation_epochs", "5", "--num_validation_images", "2", "--validation_inference_steps", "2",
            "--validation_negative_prompt", "blurry", "--report_to", "tensorboard"]  # fmt: skip
    cfg = args.parse_recipe_args(SDRecipe, "t", "tiny:sd15", argv)
    loop.run(SDRecipe(cfg), cfg)
    assert seen == [True, True], "validation must see the EMA weights, at steps 2 and 4"
    a, b = (load_file(d / "unet" / "diffusion_pytorch_model.safetensors") for d in (tmp_path / "plain", out))
    assert [k for k in a if not torch.equal(a[k], b[k])] == [], "validation must leave training unchanged"
    grids = sorted(p.name for p in (out / "validation").glob("*.png"))
    assert grids == ["step-000002.png", "step-000004.png"]
    assert Image.open(out / "validation" / grids[0]).size == (160 + 2 * 32, 2 * 32)
    events = EventAccumulator(str(out / "logs" / "diffusers-npu"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert "validation" in tags["images"], tags
    assert [e.step for e in events.Images("validation")] == [2, 4]
    assert {"loss", "lr", "grad_norm", "step_time_s", "data_wait_s"} <= set(tags["scalars"]), tags["scalars"]
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_the_output_folder_gets_a_model_card_hub_tools_read(tmp_path, shapes):
    from huggingface_hub import ModelCard

    from .helpers import train

    out = tmp_path / "out"
    train("train_text_to_image_lora.py", out, shapes, "--rank", "4", "--lora_alpha", "8",
          "--validation_prompt", PROMPTS[0], "--num_validation_images", "1", "--validation_inference_steps", "2")  # fmt: skip
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "tiny:sd15" and card.data.library_name == "diffusers"
    assert {"diffusers-npu", "lora", "stable-diffusion", "text-to-image"} <= set(card.data.tags)
    text = card.text
    assert "LoRA of Stable Diffusion" in text and "| `--lora_alpha` | `8` |" in text and PROMPTS[0] in text
    assert "](validation/step-000002.png)" in text and (out / "validation" / "step-000002.png").is_file()
    assert f'pipe.load_lora_weights("{out}")' in text
