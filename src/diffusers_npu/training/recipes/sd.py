"""Stable Diffusion 1.x / 2.x fine-tuning (epsilon or v-prediction), full or LoRA."""

from __future__ import annotations

import torch

from .ddpm import DDPMRecipe


class SDRecipe(DDPMRecipe):
    """One CLIP text encoder; the UNet is called as ``unet(noisy, t, encoder_hidden_states)``."""

    family, family_tag = "Stable Diffusion", "stable-diffusion"

    def load(self) -> None:
        from diffusers import StableDiffusionPipeline
        from transformers import CLIPTextModel, CLIPTokenizer

        cfg = self.cfg
        self.pipeline_cls = StableDiffusionPipeline
        path = self.load_denoising_parts()
        common = {"revision": cfg.revision, "cache_dir": cfg.cache_dir}
        self.tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **common)
        self.text_encoder = CLIPTextModel.from_pretrained(
            path, subfolder="text_encoder", variant=cfg.variant, **common
        )
        self.text_encoders = [self.text_encoder]

    def text_components(self) -> dict:
        return {"text_encoder": self.text_encoder, "tokenizer": self.tokenizer}

    def tokenize(self, captions: list[str]) -> dict:
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids  # fmt: skip
        return {"input_ids": ids}  # (B, 77)

    def encode_ids(self, encoded: dict) -> dict:
        hidden = self.text_encoder(encoded["input_ids"].to(self.device), return_dict=False)[0]  # (B, 77, C)
        return {"encoder_hidden_states": hidden}

    def predict(
        self, model: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, encoded: dict
    ) -> torch.Tensor:
        context = encoded["encoder_hidden_states"].to(self.device)
        return model(noisy, timesteps, context, return_dict=False)[0]


class SDLoRARecipe(SDRecipe):
    """LoRA (PEFT) on the UNet's attention projections; the rest frozen."""

    lora = True
