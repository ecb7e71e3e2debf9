"""What the UNet recipes (SD 1.x/2.x, SDXL) share: DDPM noising, the eps/v target, Min-SNR weights, LoRA, EMA.

:class:`DDPMRecipe` implements the loop's contract (training/recipe.py). Subclasses load their text side and say
how captions are encoded and how the UNet is called; none of them owns a loop.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import ClassVar

import torch

from ... import attention
from ...model_paths import resolve_model_path
from .. import data
from ..config import DDPMConfig
from ..model_card import ModelCardInfo
from .common import CLIP_LORA_TARGETS, lora_config, model_source, move, per_sample_mse, pixels


class DDPMRecipe:
    """The loop's hooks for a UNet trained with DDPM noising. Subclasses set ``pipeline_cls`` and implement
    ``load``, ``tokenize``, ``encode_ids`` and ``predict``; the class attribute ``lora`` selects LoRA (peft) over a full
    fine-tune, and with it the LoRA flags."""

    config_cls: ClassVar[type[DDPMConfig]] = DDPMConfig
    lora: ClassVar[bool] = False
    family: ClassVar[str]  # the model family's name and hub tag, for the model card
    family_tag: ClassVar[str]
    pipeline_cls: type
    unet: torch.nn.Module
    vae: torch.nn.Module
    noise_scheduler: object

    def __init__(self, cfg: DDPMConfig):
        self.cfg = cfg
        self.ema = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        from .. import args

        args.add_ddpm_args(parser)
        args.add_image_data_args(parser)
        if cls.lora:
            args.add_lora_args(parser, text_encoder=True)

    # ---- setup -------------------------------------------------------------------------------------
    def load_denoising_parts(self) -> str:
        """Resolve the model path and load what every UNet recipe shares: VAE (or the separate
        ``--pretrained_vae_model_name_or_path``), UNet and the DDPM training scheduler. Returns the path."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        cfg = self.cfg
        self.model_path = path = model_source(cfg, self.pipeline_cls)
        common = {"revision": cfg.revision, "cache_dir": cfg.cache_dir}
        vae_path = cfg.pretrained_vae_model_name_or_path
        self.vae = (
            AutoencoderKL.from_pretrained(resolve_model_path(vae_path, "--pretrained_vae_model_name_or_path", "config.json"), **common)
            if vae_path else AutoencoderKL.from_pretrained(path, subfolder="vae", variant=cfg.variant, **common)
        )  # fmt: skip
        self.unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=cfg.variant, **common)
        self.noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **common)
        return path

    def prepare(self, device: torch.device, device_kind: str, weight_dtype: torch.dtype) -> None:
        """Freeze what is not trained, add LoRA, choose attention, move and cast. Called once by the loop."""
        cfg = self.cfg
        self.device, self.weight_dtype = device, weight_dtype
        for module in self.frozen_modules():
            move(module.requires_grad_(False).eval(), device, weight_dtype)
        if self.vae_in_fp32():
            move(self.vae, device, torch.float32)
        if cfg.prediction_type:
            self.noise_scheduler.register_to_config(prediction_type=cfg.prediction_type)
        self.unet.requires_grad_(not self.lora)
        if self.lora:
            move(self.unet, device, weight_dtype)
            self.unet.add_adapter(lora_config(cfg.rank, cfg.lora_alpha))
            for p in self.unet.parameters():  # LoRA weights train in fp32 over a frozen reduced-precision base
                if p.requires_grad:
                    p.data = p.data.float()
        else:
            self.unet.to(device)
        if cfg.train_text_encoder:  # LoRA on CLIP's attention too, trained in fp32 like the UNet's
            for encoder in self.text_encoders:
                encoder.add_adapter(lora_config(cfg.rank, cfg.lora_alpha, CLIP_LORA_TARGETS))
                for p in encoder.parameters():
                    if p.requires_grad:
                        p.data = p.data.float()
                encoder.train()
                if cfg.gradient_checkpointing:
                    encoder.gradient_checkpointing_enable()
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        attention.set_attention(self.unet, cfg.attention, device_kind, weight_dtype)
        self.unet.train()
        self.trained = TextAndUNet(self.unet, self.text_encoders, self) if cfg.train_text_encoder else self.unet
        if cfg.proportion_empty_prompts > 0:  # the empty prompt's (1, ...) embeddings or token ids, for _drop_prompts
            with torch.no_grad():
                empty = self.tokenize([""])
                self._empty_prompt = empty if cfg.train_text_encoder else self.encode_ids(empty)

    def vae_in_fp32(self) -> bool:
        """Keep the VAE in fp32 whatever the mixed precision (SDXL's VAE overflows in fp16)."""
        return False

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.vae, *self.text_encoders]

    def frozen_encoders(self) -> list[torch.nn.Module]:
        # The empty prompt for --proportion_empty_prompts is encoded in prepare; trained text encoders stay.
        return [self.vae] if self.cfg.train_text_encoder else self.frozen_modules()

    def build_dataset(self) -> torch.utils.data.Dataset:
        return data.image_caption_dataset(self.cfg)

    def batch_sampler(self, dataset: data.ImageCaptionDataset, num_replicas: int):
        return data.bucket_sampler(dataset, self.cfg.train_batch_size, num_replicas, self.cfg.seed)

    def collate(self, examples: list[dict]) -> dict:
        return data.collate(examples)

    def cache_identity(self) -> str:
        cfg = self.cfg
        return json.dumps([type(self).__name__, self.model_path, cfg.revision, cfg.variant,
                           cfg.pretrained_vae_model_name_or_path, str(self.weight_dtype)])  # fmt: skip

    def trainable_model(self) -> torch.nn.Module:
        return self.trained

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.trained.parameters() if p.requires_grad]

    def make_ema(self):
        """diffusers' EMAModel over the UNet (full fine-tune only), or None."""
        if not self.cfg.use_ema:
            return None
        from diffusers.training_utils import EMAModel

        self.ema = EMAModel(
            self.unet.parameters(), decay=self.cfg.ema_decay, model_cls=type(self.unet), model_config=self.unet.config
        )
        self.ema.to(self.device)
        return self.ema

    # ---- per step ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_batch(self, batch: dict) -> dict:
        """Pixels to latents (with the random flip) and captions to embeddings: the frozen part of a step."""
        images = pixels(batch, self.device, self.vae.dtype, self.cfg.random_flip)
        latents = self.vae.encode(images).latent_dist.sample() * self.vae.config.scaling_factor
        ids = self.tokenize(list(batch["captions"]))
        return {
            "latents": latents.float(),
            # With --train_text_encoder the encoders run inside the step (TextAndUNet), with gradients.
            **(ids if self.cfg.train_text_encoder else self.encode_ids(ids)),
            **self.micro_conditioning(batch),
        }

    def encode_text(self, captions: list[str]) -> dict:
        return self.encode_ids(self.tokenize(captions))

    def micro_conditioning(self, batch: dict) -> dict[str, torch.Tensor]:
        """Per-example conditioning besides the text (SDXL: size and crop ids); none for SD 1.x/2.x."""
        return {}

    def _drop_prompts(self, encoded: dict) -> dict:
        """--proportion_empty_prompts, drawn every step (so also on cached encodings): a dropped example's text
        embeddings become the empty prompt's, as diffusers' train_text_to_image*.py drop the caption itself. This
        teaches the unconditional model that classifier-free guidance needs (Ho & Salimans 2022)."""
        p = self.cfg.proportion_empty_prompts
        if p <= 0:
            return encoded
        drop = (torch.rand(encoded["latents"].shape[0]) < p).to(self.device)  # (B,)
        out = dict(encoded)
        for key, empty in self._empty_prompt.items():
            value = encoded[key].to(self.device)
            keep = drop.view(-1, *[1] * (value.dim() - 1))
            out[key] = torch.where(keep, empty.to(value.dtype).expand_as(value), value)
        return out

    def per_sample_loss(self, model: torch.nn.Module, encoded: dict) -> torch.Tensor:
        """DDPM training loss (Ho et al., 2020) per example, (B,): noise the latents at random t, predict eps or v.

        ``--noise_offset`` follows Guttenberg (2023, "Diffusion with Offset Noise"); ``--snr_gamma`` weights by
        Min-SNR-gamma (Hang et al., 2023).
        """
        encoded = self._drop_prompts(encoded)
        latents = encoded["latents"].to(self.device)
        noise = torch.randn_like(latents)
        if self.cfg.noise_offset:
            noise += self.cfg.noise_offset * torch.randn(
                latents.shape[0], latents.shape[1], 1, 1, device=latents.device
            )
        sched = self.noise_scheduler
        timesteps = torch.randint(
            0, sched.config.num_train_timesteps, (latents.shape[0],), device=latents.device
        ).long()
        noisy = sched.add_noise(latents, noise, timesteps)
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents, noise, timesteps)
        pred = (
            model(noisy, timesteps, encoded)
            if self.cfg.train_text_encoder
            else self.predict(model, noisy, timesteps, encoded)
        )
        loss = per_sample_mse(pred, target)
        weights = self._snr_weights(timesteps)
        return loss if weights is None else loss * weights

    def _snr_weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        if self.cfg.snr_gamma is None:
            return None
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise_scheduler, timesteps)
        weights = torch.clamp(snr, max=self.cfg.snr_gamma) / snr
        return weights if self.noise_scheduler.config.prediction_type == "epsilon" else weights * snr / (snr + 1)

    # ---- output ------------------------------------------------------------------------------------
    def save_checkpoint_model(self, unet: torch.nn.Module, directory: Path) -> None:
        """``checkpoint-N/unet`` (and ``unet_ema``) as diffusers' scripts lay them out, or the LoRA file."""
        if self.lora:
            self.save_lora(directory)
            return
        unet.save_pretrained(str(directory / "unet"), safe_serialization=True)
        if self.ema is not None:
            self.ema.save_pretrained(str(directory / "unet_ema"))

    def save_lora(self, directory: Path) -> None:
        """``pytorch_lora_weights.safetensors`` for stock ``load_lora_weights``, its PEFT config (rank, alpha,
        targets) in the safetensors metadata, so a LoRA with ``--lora_alpha`` != ``--rank`` reloads at its scale;
        text-encoder LoRA under the ``text_encoder`` / ``text_encoder_2`` names stock diffusers expects;
        ``--lora_format kohya``: the same file in kohya's names and alphas (stock diffusers reads it too)."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        parts = {"unet": self.unet}
        if self.cfg.train_text_encoder:
            parts.update(zip(("text_encoder", "text_encoder_2"), self.text_encoders))
        layers = {}
        for name, module in parts.items():
            layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
            layers[f"{name}_lora_adapter_metadata"] = module.peft_config["default"].to_dict()
        self.pipeline_cls.save_lora_weights(save_directory=str(directory), safe_serialization=True, **layers)
        if self.cfg.lora_format == "kohya":
            from ...convert.kohya_lora import FILE_NAME, convert_file_to_kohya

            convert_file_to_kohya(directory / FILE_NAME)

    def save_weights(self, unet: torch.nn.Module, output_dir: Path) -> None:
        """Full fine-tune: a whole diffusers pipeline; LoRA: weights stock ``load_lora_weights`` loads."""
        if self.lora:
            self.save_lora(output_dir)
            return
        if self.ema is not None:
            self.ema.copy_to(unet.parameters())
        # A separate --pretrained_vae_model_name_or_path goes into the saved pipeline, as in diffusers' scripts.
        vae = {"vae": self.vae.to(torch.float32)} if self.cfg.pretrained_vae_model_name_or_path else {}
        pipe = self.pipeline_cls.from_pretrained(self.model_path, unet=unet, dtype=torch.float32, **vae)
        pipe.save_pretrained(str(output_dir), safe_serialization=True)

    def model_card_info(self) -> ModelCardInfo:
        cls, out = self.pipeline_cls.__name__, self.cfg.output_dir
        load = (f'pipe = {cls}.from_pretrained("{self.cfg.pretrained_model_name_or_path}")\n'
                f'pipe.load_lora_weights("{out}")') if self.lora else f'pipe = {cls}.from_pretrained("{out}")'  # fmt: skip
        return ModelCardInfo(
            title=f"{'LoRA' if self.lora else 'Full fine-tune'} of {self.family}",
            tags=("text-to-image", self.family_tag, *(["lora"] if self.lora else [])),
            usage=f'from diffusers import {cls}\n\n{load}\nimage = pipe("{self._card_prompt()}").images[0]',
        )

    def _card_prompt(self) -> str:
        from ..validation import prompts

        return (prompts(self.cfg) or ["a photo"])[0].replace('"', "'")

    def validation_pipeline(self, model: torch.nn.Module):
        """A pipeline over the live modules (their LoRA included), for validation images during training."""
        return self.pipeline_cls.from_pretrained(
            self.model_path, unet=self.unet, vae=self.vae, **self.text_components(), dtype=self.weight_dtype
        )


class TextAndUNet(torch.nn.Module):
    """The trained module under ``--train_text_encoder``: the text encoders (with their LoRA) and the UNet in one
    forward, so accelerate (DDP) sees every trained parameter. ``encoded`` holds token ids; the recipe's
    ``encode_ids`` and ``predict`` do the rest, on these same modules."""

    def __init__(self, unet: torch.nn.Module, text_encoders: list[torch.nn.Module], recipe: DDPMRecipe):
        super().__init__()
        self.unet, self.text_encoders = unet, torch.nn.ModuleList(text_encoders)
        self._recipe = [recipe]  # a list: not a submodule, not in the state dict

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, encoded: dict) -> torch.Tensor:
        recipe = self._recipe[0]
        return recipe.predict(self.unet, noisy, timesteps, {**encoded, **recipe.encode_ids(encoded)})
