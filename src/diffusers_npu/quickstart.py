"""README command 1: train the built-in tiny SD model on generated coloured shapes, check that the loss falls,
sample one image per prompt from the trained weights and check that the samples follow their prompts.
Offline, about three minutes on 2 CPU cores.

The training images are the four prompts' shapes at random sizes and positions. The tiny model's VAE is random,
so it is first fitted to them as an autoencoder (``--vae_steps``) and its ``scaling_factor`` set so that its
latents have unit variance; the UNet is then fine-tuned with v-prediction through the regular training loop and
flags (``--steps``). ``samples.png`` shows, per prompt, a training image above the sample; the run ends with
``prompts followed: K/4`` (background and shape colours read back from each sample, ``follows_prompt``).

``python -m diffusers_npu.quickstart [--output_dir DIR] [--steps N]`` (``bash scripts/quickstart.sh`` sets up
a virtual environment first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from .errors import UserError, cli_entry

PROMPTS = ("a red circle on a white background", "a blue square on a black background",
           "a yellow triangle on a white background", "a green circle on a black background")  # fmt: skip
# "The loss falls clearly": the mean of the last 10% of steps at most this fraction of the first 10%'s.
FALL_RATIO = 0.8
# Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598) needs an unconditional model: the UNet learns
# one from captions dropped to "" (--proportion_empty_prompts; 0.1 is one of that paper's two best values).
# With --cache_latents the dropped captions are drawn once, so the same ~10% of images stay unconditional.
EMPTY_PROMPTS = 0.1
# Measured over 10 sampling seeds after the default run: 2 follows the prompts at least as often as 1 or 3;
# at 5 and above the colours overshoot. The pipeline's default, 7.5, is tuned for real SD models.
GUIDANCE_SCALE = 2.0
SAMPLE_STEPS = 25
# The frozen text encoder is random, so the prompts' embeddings are close (tens of percent apart): at 1e-3 the
# UNet had not yet told them apart after 600 steps (3.6 of 4 prompts followed, mean over 10 sampling seeds), at
# 2e-3 it had (4.0); batch 32 did as well at 2.4x the time.
LEARNING_RATE = 2e-3
CELL_PX = 128  # every image is shown upscaled (nearest) to CELL_PX x CELL_PX, its prompt above


def loss_fell(losses: list[float]) -> tuple[float, float, bool]:
    """(mean of the first 10% of steps, mean of the last 10%, whether the last is clearly lower)."""
    window = max(1, len(losses) // 10)
    first, last = statistics.fmean(losses[:window]), statistics.fmean(losses[-window:])
    return first, last, last <= FALL_RATIO * first


# ---- reading a sample's colours back ---------------------------------------------------------------------------


def _nearest(rgb, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda name: sum((float(a) - b) ** 2 for a, b in zip(rgb, palette[name])))


def read_colours(image) -> tuple[str, str]:
    """(background, shape colour) names of a square RGB image (PIL image or (H, W, 3) array).

    Background: the mean of the four corner patches (side 1/8 of the image), nearest of the generator's
    ``BACKGROUNDS``. Shape: the mean of the central patch (same side), nearest of the ``COLOURS`` *and* the
    backgrounds, so a blank white sample does not pass for a yellow shape. The generated shapes always cover the
    centre and leave the corners free (``training.data.draw_shape``).
    """
    import numpy as np

    from .training.data import BACKGROUNDS, COLOURS

    pixels = np.asarray(image, dtype=np.float64)[..., :3]  # (H, W, 3)
    side = max(1, min(pixels.shape[:2]) // 8)
    corners = [pixels[:side, :side], pixels[:side, -side:], pixels[-side:, :side], pixels[-side:, -side:]]
    top, left = (pixels.shape[0] - side) // 2, (pixels.shape[1] - side) // 2
    centre = pixels[top : top + side, left : left + side]
    background = _nearest(np.concatenate(corners).reshape(-1, 3).mean(axis=0), BACKGROUNDS)
    return background, _nearest(centre.reshape(-1, 3).mean(axis=0), {**COLOURS, **BACKGROUNDS})


def prompt_colours(prompt: str) -> tuple[str, str]:
    """(background, shape colour) a shapes prompt asks for: ``a red circle on a white background`` ->
    ``("white", "red")``. Raises ``ValueError`` for a prompt that names neither exactly once."""
    from .training.data import BACKGROUNDS, COLOURS

    words = prompt.split()
    found = [[w for w in words if w in names] for names in (BACKGROUNDS, COLOURS)]
    if any(len(f) != 1 for f in found):
        raise ValueError(f"{prompt!r} does not name one background ({', '.join(BACKGROUNDS)}) and one colour")
    return found[0][0], found[1][0]


def follows_prompt(image, prompt: str) -> bool:
    """Whether ``image``'s background and shape colours (``read_colours``) are the ones ``prompt`` names."""
    return read_colours(image) == prompt_colours(prompt)


# ---- training -------------------------------------------------------------------------------------------------


def fit_vae(vae, pixels, steps: int, seed: int) -> float:
    """Fit the (random) ``vae`` to ``pixels`` (N, 3, H, W) in [-1, 1] as a plain autoencoder, so that samples
    decode to colours and shapes rather than noise. Returns the std of its latents over ``pixels``."""
    import torch

    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = pixels[torch.randint(0, len(pixels), (16,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        loss = torch.nn.functional.mse_loss(vae.decode(posterior.sample(generator)).sample, batch)
        loss = loss + 1e-6 * posterior.kl().mean()  # a whisper of KL keeps the latents bounded
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        latent_std = vae.encode(pixels).latent_dist.sample(generator).std().item()
    print(f"vae: reconstruction mse {loss.item():.4f} after {steps} steps, latent std {latent_std:.3f}")
    return latent_std


def make_base_model(base: Path, dataset: Path, resolution: int, vae_steps: int, seed: int) -> Path:
    """Copy tiny:sd15 to ``base`` with its VAE fitted to ``dataset`` (``fit_vae``), the VAE's ``scaling_factor``
    set to 1 / latent std, and v-prediction. The SD recipe then trains the UNet and keeps this VAE frozen."""
    import shutil

    import diffusers
    import torch

    from . import tiny
    from .training import data

    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(tiny.tiny_model_path("sd15"), base)
    hf, image_col, caption_col = data.load_image_text_dataset(None, str(dataset))
    images = data.ImageCaptionDataset(hf, image_col, caption_col, resolution, center_crop=True)
    pixels = torch.stack([images[i]["pixel_values"] for i in range(len(images))])
    vae = diffusers.AutoencoderKL.from_pretrained(base / "vae")
    latent_std = fit_vae(vae, pixels, vae_steps, seed)
    # The noise schedule assumes unit-variance data, so Rombach et al. 2022 (arXiv:2112.10752, Sec. 4.3.2 and
    # Appendix G) rescale latents by 1/std measured on data; SD's 0.18215 is that number for SD's VAE, not this one.
    vae.register_to_config(scaling_factor=1.0 / latent_std)
    vae.save_pretrained(base / "vae")
    # v-prediction (Salimans & Ho 2022, arXiv:2202.00512, Sec. 4; as SD 2.x): its loss is the epsilon loss times
    # 1 + 1/SNR. The epsilon loss all but ignores the high-noise steps where the layout, and so the prompt, is
    # decided: after 600 steps it was the same whichever prompt the UNet was given, and the samples ignored it.
    # Training (DDPMScheduler) and sampling (the pipeline's scheduler) both read it from this config.
    scheduler = diffusers.PNDMScheduler.from_pretrained(base / "scheduler")
    scheduler.register_to_config(prediction_type="v_prediction")
    scheduler.save_pretrained(base / "scheduler")
    return base


def train(out: Path, steps: int, vae_steps: int, num_images: int, resolution: int, seed: int):
    """Full fine-tune of tiny:sd15 (``make_base_model`` first) on the prompts' shapes through the regular flags
    and loop. Returns the loop's ``RunStats``."""
    from .training import args, data, loop
    from .training.recipes.sd import SDRecipe

    combos = [c for c in data.COMBOS if data.shape_caption(*c) in PROMPTS]  # 16 images a prompt at 64
    dataset = data.make_shapes_dataset(out / "data", num_images, resolution, seed, combos=combos)
    base = make_base_model(out / "base", dataset, resolution, vae_steps, seed)
    argv = ["--pretrained_model_name_or_path", str(base), "--train_data_dir", str(dataset),
            "--output_dir", str(out / "model"), "--resolution", str(resolution), "--train_batch_size", "8",
            "--max_train_steps", str(steps), "--learning_rate", str(LEARNING_RATE), "--lr_scheduler", "cosine",
            "--lr_warmup_steps", str(max(1, steps // 20)), "--checkpointing_steps", str(steps), "--seed", str(seed),
            "--logging_steps", str(max(1, steps // 10)), "--proportion_empty_prompts", str(EMPTY_PROMPTS),
            "--cache_latents"]  # fmt: skip
    cfg = args.parse_recipe_args(SDRecipe, __doc__, "tiny:sd15", argv)
    return loop.run(SDRecipe(cfg), cfg)


# ---- samples and the picture ----------------------------------------------------------------------------------


def sample(model_dir: Path, prompts: tuple[str, ...], resolution: int, seed: int) -> list:
    """One PIL image per prompt from the trained pipeline."""
    import diffusers
    import torch

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return pipe(list(prompts), num_inference_steps=SAMPLE_STEPS, guidance_scale=GUIDANCE_SCALE, height=resolution,
                width=resolution, generator=generator).images  # fmt: skip


def training_examples(dataset: Path, prompts: tuple[str, ...]) -> list:
    """For each prompt, the first generated training image with that caption. Raises ``UserError`` if one has
    none (fewer ``--num_images`` than combinations)."""
    from PIL import Image

    rows = [json.loads(line) for line in (dataset / "metadata.jsonl").read_text().splitlines()]
    names = {}
    for row in rows:
        names.setdefault(row["text"], row["file_name"])
    missing = [p for p in prompts if p not in names]
    if missing:
        raise UserError(f"no training image of {missing[0]!r} in {dataset}; use more --num_images")
    return [Image.open(dataset / names[p]).convert("RGB") for p in prompts]


def _wrap(draw, text: str, width: int) -> list[str]:
    """``text`` broken at spaces into lines that fit ``width`` pixels in the default font."""
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if lines[-1] and draw.textlength(candidate) > width:
            lines.append(word)
        else:
            lines[-1] = candidate
    return lines


def save_picture(prompts, examples: list, samples: list, verdicts: list[bool], out_png: Path) -> Path:
    """One column per prompt: the prompt, a training image, the sample and its verdict, upscaled (nearest).

    Row titles on the left say which row is which; returns ``out_png``.
    """
    from PIL import Image, ImageDraw

    margin, line_px, label_lines = 88, 12, 3
    label_px = label_lines * line_px + 4
    grid = Image.new("RGB", (margin + len(prompts) * (CELL_PX + 8), label_px + 2 * CELL_PX + 24), "white")
    draw = ImageDraw.Draw(grid)
    for row, title in enumerate(("training image", "sample")):
        draw.text((4, label_px + row * CELL_PX + CELL_PX // 2), title, fill="black")
    for col, (prompt, example, image, ok) in enumerate(zip(prompts, examples, samples, verdicts)):
        x = margin + col * (CELL_PX + 8)
        for i, line in enumerate(_wrap(draw, prompt, CELL_PX)[:label_lines]):
            draw.text((x, 2 + i * line_px), line, fill="black")
        for row, picture in enumerate((example, image)):
            grid.paste(picture.resize((CELL_PX, CELL_PX), Image.Resampling.NEAREST), (x, label_px + row * CELL_PX))
        verdict = "follows the prompt" if ok else "does not follow"
        draw.text((x, label_px + 2 * CELL_PX + 6), verdict, fill=(0, 120, 0) if ok else (200, 0, 0))
    grid.save(out_png)
    return out_png


def check_args(steps: int, vae_steps: int, num_images: int) -> None:
    """Raise ``UserError`` (one line naming the flag and the fix) before any work for values the run cannot use."""
    if steps < 10:
        raise UserError(f"--steps {steps} is too few to see the loss fall; use at least 10")
    if vae_steps < 1:
        raise UserError(f"--vae_steps {vae_steps} leaves the tiny model's VAE random; use at least 1")
    if num_images < len(PROMPTS):
        raise UserError(f"--num_images {num_images} is fewer than one image per prompt; use at least {len(PROMPTS)}")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusers_npu.quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=Path("quickstart-output"))
    parser.add_argument("--steps", type=int, default=600, help="UNet optimizer steps (default: %(default)s)")
    parser.add_argument("--vae_steps", type=int, default=300, help="VAE fitting steps (default: %(default)s)")
    parser.add_argument("--num_images", type=int, default=64, help="generated training images")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    check_args(a.steps, a.vae_steps, a.num_images)
    from .logs import setup_logging

    setup_logging()  # before the VAE fit reads the dataset: library progress bars off from the first line
    stats = train(a.output_dir, a.steps, a.vae_steps, a.num_images, a.resolution, a.seed)
    first, last, fell = loss_fell(stats.step_losses)
    print(f"loss: first 10% of steps {first:.4f} -> last 10% {last:.4f}")
    if not fell:
        raise UserError(f"the loss did not fall clearly ({first:.4f} -> {last:.4f}); try more --steps")
    samples = sample(a.output_dir / "model", PROMPTS, a.resolution, a.seed)
    verdicts = [follows_prompt(image, prompt) for image, prompt in zip(samples, PROMPTS)]
    examples = training_examples(a.output_dir / "data", PROMPTS)
    picture = save_picture(PROMPTS, examples, samples, verdicts, a.output_dir / "samples.png")
    print(f"trained model: {a.output_dir / 'model'}")
    print(f"samples, one per prompt under a training image: {picture}")
    print(f"prompts followed: {sum(verdicts)}/{len(PROMPTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
