"""The training data loader: the recipe's dataset, its encoders' output cached when asked, in the recipe's batch
order, seeded, and prepared by accelerate so each process gets its share."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import devices
from ..errors import UserError
from . import latent_cache
from .config import TrainConfig
from .recipe import Recipe


def stack(examples: list[dict]) -> dict:
    """Cached examples (dicts of tensors) into a batch."""
    return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


def build(recipe: Recipe, cfg: TrainConfig, accelerator, device: devices.Device, out: Path):
    """The recipe's dataset (cached, with --cache_latents / --cache_latents_to_disk) in its batch order, prepared
    by accelerate (each process gets its share)."""
    from accelerate.utils import set_seed

    dataset = recipe.build_dataset()
    batches = recipe.batch_sampler(dataset, accelerator.num_processes)
    if cfg.cache_latents_to_disk:
        folder = Path(cfg.latent_cache_dir or out / "latent_cache")
        dataset = latent_cache.build_disk_cache(
            dataset, recipe.collate, recipe.encode_batch, folder, recipe.cache_identity(),
            accelerator.process_index, accelerator.num_processes, accelerator.wait_for_everyone, cfg.dataloader_num_workers,
        )  # fmt: skip
    elif cfg.cache_latents:
        dataset = latent_cache.encode_in_memory(
            dataset, recipe.collate, recipe.encode_batch, cfg.dataloader_num_workers
        )
    if cfg.caches:  # training draws the same random numbers whether the cache was built now or found on disk
        set_seed(cfg.seed)
        move_encoders(recipe, "cpu")  # the steps run the trained model only
        device.empty_cache()
    order = (
        {"batch_sampler": batches} if batches is not None else {"batch_size": cfg.train_batch_size, "shuffle": True}
    )
    loader = torch.utils.data.DataLoader(
        dataset, **order, collate_fn=stack if cfg.caches else recipe.collate,
        # Its own generator, also under a batch sampler: creating a loader iterator (as resuming does) draws a
        # worker base seed from it, and must not draw from the global RNG (torch/utils/data/dataloader.py).
        generator=torch.Generator().manual_seed(cfg.seed),
        num_workers=cfg.dataloader_num_workers, pin_memory=cfg.pin_memory and device.supports_pin_memory,
        persistent_workers=cfg.persistent_workers and cfg.dataloader_num_workers > 0,
    )  # fmt: skip
    loader = accelerator.prepare(loader)  # first, so the step count is per process
    if len(loader) == 0:
        raise UserError(
            f"the dataset has fewer samples than one batch per process; lower --train_batch_size ({cfg.train_batch_size})"
        )
    return loader


def move_encoders(recipe: Recipe, device: torch.device | str) -> None:
    """The recipe's frozen encoders to ``device``: off the device once a cache is built, back for validation."""
    for module in recipe.frozen_encoders():
        module.to(device)
