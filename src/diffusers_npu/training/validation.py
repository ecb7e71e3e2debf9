"""Validation images during training, as diffusers' example scripts make them (``log_validation``).

When: every ``--validation_epochs`` epochs and, with ``--validation_steps N``, every N optimizer steps. What: each
of ``--validation_prompt`` / ``--validation_prompts`` (several, or a text file of one prompt per line) with
``--validation_negative_prompt``, ``--num_validation_images`` each from ``--validation_seed`` (default ``--seed``),
``--validation_inference_steps`` steps at ``--resolution`` square. With which weights: the live model's, or the
EMA's under ``--use_ema`` (swapped in and back, as upstream's ``ema_unet.store / copy_to / restore``). Where: one
labelled grid per validation, ``output_dir/validation/step-NNNNNN.png`` (a row per prompt), and to the
``--report_to`` trackers (TensorBoard image ``validation``, a wandb image per prompt row).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError


def prompts(cfg) -> list[str]:
    """The validation prompts of a config, in order (empty: no validation)."""
    out = [cfg.validation_prompt] if cfg.validation_prompt else []
    given = list(cfg.validation_prompts or [])
    if len(given) == 1 and Path(given[0]).is_file():
        given = [line.strip() for line in Path(given[0]).read_text().splitlines() if line.strip()]
        if not given:
            raise UserError(f"--validation_prompts {cfg.validation_prompts[0]} holds no prompts; one per line")
    return out + given


def due(cfg, step: int, epoch_end: int | None = None) -> bool:
    """Whether validation runs now: after optimizer ``step``, or at the end of epoch ``epoch_end`` (0-based)."""
    if not prompts(cfg):
        return False
    if epoch_end is not None:
        return (epoch_end + 1) % cfg.validation_epochs == 0
    return cfg.validation_steps is not None and step % cfg.validation_steps == 0


def labelled_grid(rows: list[list], labels: list[str], label_width: int = 160):
    """One PIL image: a row of images per label, the label written to its left."""
    from PIL import Image, ImageDraw

    w, h = rows[0][0].size
    columns = max(len(r) for r in rows)
    grid = Image.new("RGB", (label_width + columns * w, len(rows) * h), "white")
    draw = ImageDraw.Draw(grid)
    for i, (row, label) in enumerate(zip(rows, labels)):
        lines = textwrap.wrap(label, width=max(8, label_width // 7))[: max(1, h // 12)]
        draw.multiline_text((4, i * h + 2), "\n".join(lines), fill="black", spacing=2)
        for j, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((w, h)), (label_width + j * w, i * h))
    return grid


def render(pipeline, cfg, device, autocast) -> list[list]:
    """``num_validation_images`` images per prompt, seeded, as PIL images (a list per prompt)."""
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device).manual_seed(cfg.seed if cfg.validation_seed is None else cfg.validation_seed)
    rows = []
    for prompt in prompts(cfg):
        with autocast():
            rows.append(pipeline(prompt, negative_prompt=cfg.validation_negative_prompt,
                                 num_images_per_prompt=cfg.num_validation_images, generator=generator,
                                 height=cfg.resolution, width=cfg.resolution,
                                 num_inference_steps=cfg.validation_inference_steps).images)  # fmt: skip
    return rows


def publish(rows: list[list], cfg, out: Path, step: int, trackers) -> Path:
    """Save the labelled grid into ``out/validation`` and hand it to the trackers; returns the grid's path."""
    labels = prompts(cfg)
    grid = labelled_grid(rows, labels)
    folder = out / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:06d}.png"
    grid.save(path)
    for tracker in trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log(
                {"validation": [wandb.Image(labelled_grid([r], [p]), caption=p) for r, p in zip(rows, labels)]},
                step=step,
            )
    return path
