"""What every latent-diffusion recipe shares: the DDPM noising, the target, Min-SNR weights, LoRA, EMA.

A recipe is a handful of hooks the shared loop calls (STYLE.md B4). Subclasses load their components and
say how a batch is encoded and how the UNet is called; none of them owns a loop.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ... import attention
from ...model_paths import resolve_model_path
from ..config import TrainConfig

# PEFT targets of diffusers' train_text_to_image_lora(.py|_sdxl.py): the attention projections.
UNET_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")


def lora_config(rank: int, alpha: int | None, targets: tuple[str, ...] = UNET_LORA_TARGETS):
    """PEFT LoraConfig as upstream: gaussian init, alpha defaulting to the rank (scale 1)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(targets))


def _move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move ``module`` to ``device`` and cast it to ``dtype`` only if it is not in it already: diffusers models warn
    on every ``.to(dtype)`` about modules to keep in fp32 (diffusers/models/modeling_utils.py ``to``)."""
    module.to(device)
    if module.dtype != dtype:
        module.to(dtype=dtype)


class Recipe:
    """Hooks for the shared loop. Subclasses set ``pipeline_cls`` and implement ``load_components``,
    ``encode_text`` and ``predict``; ``lora`` selects LoRA (peft) instead of a full fine-tune."""

    pipeline_cls: type
    unet: torch.nn.Module
    vae: torch.nn.Module
    noise_scheduler: object

    def __init__(self, cfg: TrainConfig, lora: bool = False):
        self.cfg = cfg
        self.lora = lora
        self.ema = None

    # ---- setup -------------------------------------------------------------------------------------
    def load_denoising_parts(self) -> str:
        """Resolve the model path and load what every UNet recipe shares: VAE (or the separate
        ``--pretrained_vae_model_name_or_path``), UNet and the DDPM training scheduler. Returns the path."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        cfg = self.cfg
        self.model_path = path = resolve_model_path(cfg.pretrained_model_name_or_path)
        common = {"revision": cfg.revision, "cache_dir": cfg.cache_dir}
        vae_path = cfg.pretrained_vae_model_name_or_path
        self.vae = (
            AutoencoderKL.from_pretrained(resolve_model_path(vae_path, "--pretrained_vae_model_name_or_path", "config.json"), **common)
            if vae_path else AutoencoderKL.from_pretrained(path, subfolder="vae", variant=cfg.variant, **common)
        )  # fmt: skip
        self.unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=cfg.variant, **common)
        self.noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **common)
        return path

    def prepare_models(self, device: torch.device, device_kind: str, weight_dtype: torch.dtype) -> None:
        """Freeze what is not trained, add LoRA, choose attention, move and cast. Called once by the loop."""
        cfg = self.cfg
        self.device, self.weight_dtype = device, weight_dtype
        for module in self.frozen_modules():
            _move(module.requires_grad_(False).eval(), device, weight_dtype)
        if self.vae_in_fp32():
            _move(self.vae, device, torch.float32)
        if cfg.prediction_type:
            self.noise_scheduler.register_to_config(prediction_type=cfg.prediction_type)
        self.unet.requires_grad_(not self.lora)
        if self.lora:
            _move(self.unet, device, weight_dtype)
            self.unet.add_adapter(lora_config(cfg.rank, cfg.lora_alpha))
            for p in self.unet.parameters():  # LoRA weights train in fp32 over a frozen reduced-precision base
                if p.requires_grad:
                    p.data = p.data.float()
        else:
            self.unet.to(device)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        attention.set_attention(self.unet, cfg.attention, device_kind, weight_dtype)
        self.unet.train()

    def vae_in_fp32(self) -> bool:
        """Keep the VAE in fp32 whatever the mixed precision (SDXL's VAE overflows in fp16)."""
        return False

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.vae, *self.text_encoders]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

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
    def pixels(self, batch: dict) -> torch.Tensor:
        """The batch's images on the device in the VAE's dtype, (B, 3, H, W), with --random_flip applied
        (and, for flipped rows, ``batch["crop_top_lefts"]`` replaced by the mirrored frame's coordinates)."""
        pixels = batch["pixel_values"].to(self.device, dtype=self.vae.dtype, non_blocking=True)
        if self.cfg.random_flip:
            flip = torch.rand(pixels.shape[0]) < 0.5  # global RNG: restored exactly on resume
            pixels = torch.where(flip.to(pixels.device)[:, None, None, None], pixels.flip(-1), pixels)
            if "flipped_crop_top_lefts" in batch:  # crop coordinates in the mirrored frame, as diffusers' SDXL script
                batch["crop_top_lefts"] = torch.where(
                    flip.to(batch["crop_top_lefts"].device)[:, None],
                    batch["flipped_crop_top_lefts"],
                    batch["crop_top_lefts"],
                )
        return pixels

    @torch.no_grad()
    def encode_batch(self, batch: dict) -> dict:
        """Pixels to latents (with the random flip) and captions to embeddings: the frozen part of a step."""
        pixels = self.pixels(batch)
        latents = self.vae.encode(pixels).latent_dist.sample() * self.vae.config.scaling_factor
        captions = list(batch["captions"])
        if self.cfg.proportion_empty_prompts > 0:
            drop = torch.rand(len(captions)) < self.cfg.proportion_empty_prompts
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        return {"latents": latents.float(), **self.encode_text(captions, batch)}

    def predict_and_target(
        self, model: torch.nn.Module, encoded: dict
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """DDPM training pair (Ho et al., 2020): noise the latents at random t, predict eps or v.

        Returns (prediction, target, per-sample loss weights or None). ``--noise_offset`` follows
        Guttenberg (2023, "Diffusion with Offset Noise"); ``--snr_gamma`` is Min-SNR-gamma (Hang et al., 2023).
        """
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
        pred = self.predict(model, noisy, timesteps, encoded)
        return pred, target, self._snr_weights(timesteps)

    def _snr_weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        if self.cfg.snr_gamma is None:
            return None
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise_scheduler, timesteps)
        weights = torch.clamp(snr, max=self.cfg.snr_gamma) / snr
        return weights if self.noise_scheduler.config.prediction_type == "epsilon" else weights * snr / (snr + 1)

    # ---- output ------------------------------------------------------------------------------------
    def save_weights(self, unet: torch.nn.Module, output_dir: Path) -> None:
        """Full fine-tune: a whole diffusers pipeline; LoRA: weights stock ``load_lora_weights`` loads."""
        if self.lora:
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
            self.pipeline_cls.save_lora_weights(
                save_directory=str(output_dir), unet_lora_layers=layers, safe_serialization=True
            )
            return
        if self.ema is not None:
            self.ema.copy_to(unet.parameters())
        # A separate --pretrained_vae_model_name_or_path goes into the saved pipeline, as in diffusers' scripts.
        vae = {"vae": self.vae.to(torch.float32)} if self.cfg.pretrained_vae_model_name_or_path else {}
        pipe = self.pipeline_cls.from_pretrained(self.model_path, unet=unet, dtype=torch.float32, **vae)
        pipe.save_pretrained(str(output_dir), safe_serialization=True)

    def validation_pipeline(self, unet: torch.nn.Module):
        """A pipeline over the live modules, for validation images during training."""
        return self.pipeline_cls.from_pretrained(
            self.model_path, unet=unet, vae=self.vae, **self.text_components(), dtype=self.weight_dtype
        )
