"""The contract between the training loop and a recipe: exactly the hooks ``loop.run`` calls, in call order.

The loop knows nothing else about a recipe: not which model it trains (UNet, FLUX transformer, ControlNet),
not the latents' shape, not its data. A recipe owns its flags too: ``add_arguments`` adds its argument groups
to the shared ones and ``config_cls`` is the frozen config they parse into (training/config.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from .config import TrainConfig
from .model_card import ModelCardInfo


class Recipe(Protocol):
    config_cls: ClassVar[type[TrainConfig]]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this recipe's argument groups (and parser defaults) to the shared ones."""

    def load(self) -> None:
        """Load every component from the model path; nothing on the device yet."""

    def prepare(self, device: torch.device, device_kind: str, weight_dtype: torch.dtype) -> None:
        """Freeze, add adapters, choose the attention kernel, move and cast. Called once, before the data."""

    def build_dataset(self) -> torch.utils.data.Dataset:
        """The training examples (after ``prepare``: DreamBooth may generate class images with the model)."""

    def batch_sampler(self, dataset: torch.utils.data.Dataset, num_replicas: int) -> Any | None:
        """The batch order (a batch sampler with ``set_epoch``, e.g. buckets.BucketBatchSampler), or None for the
        loop's seeded shuffle of single examples. ``num_replicas``: processes sharing the batches."""

    def collate(self, examples: list[dict]) -> dict:
        """A batch from dataset examples (the ``DataLoader``'s ``collate_fn``)."""

    def encode_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        """The frozen part of a step (VAE, text encoders), under no_grad. Its tensors' first dimension is the
        batch: with ``--cache_latents`` the loop stores them per example and stacks them back."""

    def frozen_encoders(self) -> list[torch.nn.Module]:
        """The frozen modules that only ``encode_batch`` and the validation pipeline run (VAE, frozen text
        encoders): with a cache the loop moves them off the device once it is built, and back for validation."""

    def cache_identity(self) -> str:
        """Everything besides the example that decides ``encode_batch``'s output (model, revision, precision...):
        part of the disk cache's keys, so a cache made by other encoders is never reused."""

    def trainable_model(self) -> torch.nn.Module:
        """The one module the loop hands to accelerate (DDP, compile) and to the hooks below."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer updates."""

    def make_ema(self) -> Any | None:
        """An EMA of the trained weights, or None: diffusers' ``EMAModel`` interface (``step``, and ``store`` /
        ``copy_to`` / ``restore`` around validation), checkpointed by the loop."""

    def per_sample_loss(self, model: torch.nn.Module, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of each example, (B,), any weighting applied; the loop takes the mean."""

    def save_checkpoint_model(self, model: torch.nn.Module, directory: Path) -> None:
        """The trained model in diffusers' layout inside checkpoint ``directory``, besides accelerate's state that
        resume reads (full fine-tune: ``unet/`` and ``unet_ema/``; LoRA: ``pytorch_lora_weights.safetensors``).
        Main process only."""

    def save_weights(self, model: torch.nn.Module, output_dir: Path) -> None:
        """The trained result in a form stock diffusers loads (a pipeline folder or LoRA weights)."""

    def model_card_info(self) -> ModelCardInfo:
        """Title, hub tags and loading code for the output folder's README.md (training/model_card.py)."""

    def validation_pipeline(self, model: torch.nn.Module) -> Any:
        """A diffusers pipeline over the live modules, for validation images."""
