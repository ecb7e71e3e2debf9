"""README command 1: train the built-in tiny SD model on generated coloured shapes, check that the loss falls,
then sample an image grid from the trained weights. Offline, about two minutes on 2 CPU cores.

The tiny model's VAE is random, so it is first fitted to the shapes as an autoencoder (``--vae_steps``); the
UNet is then fine-tuned through the regular training loop and flags (``--steps``).

``python -m diffusers_npu.quickstart [--output_dir DIR] [--steps N]`` (``bash scripts/quickstart.sh`` sets up
a virtual environment first).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from .errors import UserError, cli_entry

PROMPTS = ("a red circle on a white background", "a blue square on a black background",
           "a yellow triangle on a white background", "a green circle on a black background")  # fmt: skip
# "The loss falls clearly": the mean of the last 10% of steps at most this fraction of the first 10%'s.
FALL_RATIO = 0.8


def loss_fell(losses: list[float]) -> tuple[float, float, bool]:
    """(mean of the first 10% of steps, mean of the last 10%, whether the last is clearly lower)."""
    window = max(1, len(losses) // 10)
    first, last = statistics.fmean(losses[:window]), statistics.fmean(losses[-window:])
    return first, last, last <= FALL_RATIO * first


def fit_vae(base: Path, dataset: Path, resolution: int, steps: int, seed: int) -> Path:
    """Copy tiny:sd15 to ``base`` and fit its (random) VAE to the shapes as a plain autoencoder, so that samples
    decode to colours and shapes rather than noise. The SD recipe then keeps this VAE frozen, as usual."""
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
    print(f"vae: reconstruction mse {loss.item():.4f} after {steps} steps")
    vae.save_pretrained(base / "vae")
    return base


def train(out: Path, steps: int, vae_steps: int, num_images: int, resolution: int, seed: int):
    """Full fine-tune of tiny:sd15 (its VAE fitted first) on the shapes through the regular flags and loop."""
    from .training import args, data, loop
    from .training.recipes.sd import SDRecipe

    dataset = data.make_shapes_dataset(out / "data", num_images=num_images, resolution=resolution, seed=seed)
    base = fit_vae(out / "base", dataset, resolution, vae_steps, seed)
    argv = ["--pretrained_model_name_or_path", str(base), "--train_data_dir", str(dataset),
            "--output_dir", str(out / "model"), "--resolution", str(resolution), "--train_batch_size", "8",
            "--max_train_steps", str(steps), "--learning_rate", "1e-3", "--lr_scheduler", "cosine",
            "--lr_warmup_steps", str(max(1, steps // 20)), "--checkpointing_steps", str(steps), "--seed", str(seed),
            "--logging_steps", str(max(1, steps // 10)), "--cache_latents"]  # fmt: skip
    cfg = args.parse_recipe_args(SDRecipe, __doc__, "tiny:sd15", argv)
    return loop.run(SDRecipe(cfg), cfg)


def sample_grid(model_dir: Path, out_png: Path, resolution: int, seed: int) -> Path:
    """One image per prompt from the trained pipeline, side by side in one PNG."""
    import diffusers
    import torch
    from PIL import Image

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    images = pipe(
        list(PROMPTS), num_inference_steps=25, height=resolution, width=resolution, generator=generator
    ).images
    grid = Image.new("RGB", (resolution * len(images), resolution))
    for i, image in enumerate(images):
        grid.paste(image, (i * resolution, 0))
    grid.save(out_png)
    return out_png


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
    if a.steps < 10:
        raise UserError(f"--steps {a.steps} is too few to see the loss fall; use at least 10")
    stats = train(a.output_dir, a.steps, a.vae_steps, a.num_images, a.resolution, a.seed)
    first, last, fell = loss_fell(stats.step_losses)
    print(f"loss: first 10% of steps {first:.4f} -> last 10% {last:.4f}")
    if not fell:
        raise UserError(f"the loss did not fall clearly ({first:.4f} -> {last:.4f}); try more --steps")
    grid = sample_grid(a.output_dir / "model", a.output_dir / "samples.png", a.resolution, a.seed)
    print(f"trained model: {a.output_dir / 'model'}")
    print(f"samples ({', '.join(PROMPTS)}): {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
