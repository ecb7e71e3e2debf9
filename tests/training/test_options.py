"""Training options whose effect is observable: cached latents skip the encoders after the first pass,
validation images are written, gradient accumulation counts optimizer steps."""

from __future__ import annotations

import pytest

from .helpers import SUMMARY, train


@pytest.mark.slow
def test_cache_latents_runs_the_encoders_once(tmp_path, shapes):
    from diffusers_npu.training import args, loop
    from diffusers_npu.training.recipes.sd import SDRecipe

    argv = ["--train_data_dir", str(shapes), "--output_dir", str(tmp_path / "out"), "--resolution", "32",
            "--train_batch_size", "4", "--num_train_epochs", "3", "--cache_latents", "--checkpointing_steps", "1000"]  # fmt: skip
    cfg = args.parse_recipe_args(SDRecipe, "test", "tiny:sd15", argv)
    recipe = SDRecipe(cfg)
    calls = []
    encode = recipe.encode_batch
    recipe.encode_batch = lambda batch: calls.append(len(batch["captions"])) or encode(batch)
    stats = loop.run(recipe, cfg)
    assert len(stats.step_losses) == 6  # 8 images / batch 4 = 2 steps per epoch, 3 epochs
    assert sum(calls) == 8, "the encoders must see each image once, not once per epoch"


@pytest.mark.slow
def test_validation_images_and_gradient_accumulation(tmp_path, shapes):
    out = tmp_path / "out"
    proc = train("train_text_to_image.py", out, shapes, "--validation_prompt", "a red circle",
                 "--num_validation_images", "2", "--gradient_accumulation_steps", "2", steps=2)  # fmt: skip
    assert sorted(p.name for p in (out / "validation").glob("*.png")) == ["step-000002.png"]  # the epoch's end
    match = SUMMARY.search(proc.stdout)
    assert match and int(match.group(7)) == 2 and "global_batch=4" in proc.stdout  # 2 micro-batches of 2 per step


@pytest.mark.slow
def test_torch_compile_traces_the_model_and_keeps_checkpoint_names(tmp_path, shapes):
    import torch
    from safetensors import safe_open

    from diffusers_npu.training import args, loop
    from diffusers_npu.training.recipes.sd import SDRecipe

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    out = tmp_path / "out"
    argv = ["--train_data_dir", str(shapes), "--output_dir", str(out), "--resolution", "32", "--max_train_steps", "2",
            "--checkpointing_steps", "2", "--torch_compile", "eager"]  # fmt: skip
    cfg = args.parse_recipe_args(SDRecipe, "test", "tiny:sd15", argv)
    loop.run(SDRecipe(cfg), cfg)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "torch.compile never traced the UNet"
    with safe_open(out / "checkpoint-2" / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "_orig_mod" in k]


@pytest.mark.slow
@pytest.mark.parametrize("cache", [[], ["--cache_latents"]])
def test_empty_prompts_are_drawn_every_step_also_from_a_cache(tmp_path, shapes, monkeypatch, cache):
    import torch

    from diffusers_npu.training import args, loop
    from diffusers_npu.training.recipes.sd import SDRecipe

    seen = []
    predict = SDRecipe.predict
    monkeypatch.setattr(
        SDRecipe, "predict", lambda self, m, x, t, e: seen.append((self, e)) or predict(self, m, x, t, e)
    )
    argv = ["--train_data_dir", str(shapes), "--output_dir", str(tmp_path / "out"), "--resolution", "32",
            "--train_batch_size", "4", "--max_train_steps", "8", "--checkpointing_steps", "1000",
            "--proportion_empty_prompts", "0.5", *cache]  # fmt: skip
    cfg = args.parse_recipe_args(SDRecipe, "test", "tiny:sd15", argv)
    loop.run(SDRecipe(cfg), cfg)
    recipe = seen[0][0]
    empty = recipe._empty_prompt["encoder_hidden_states"][0]
    rows = [
        (lat, bool(torch.equal(h, empty))) for _, e in seen for lat, h in zip(e["latents"], e["encoder_hidden_states"])
    ]
    assert len(rows) == 32 and 6 <= sum(d for _, d in rows) <= 26  # Binomial(32, 0.5)
    if cache:  # the same cached image (same latents) is dropped at some steps and kept at others
        outcomes = {}
        for lat, dropped in rows:
            outcomes.setdefault(lat.numpy().tobytes(), set()).add(dropped)
        assert len(outcomes) == 8 and any(o == {True, False} for o in outcomes.values())
