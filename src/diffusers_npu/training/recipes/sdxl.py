"""Stable Diffusion XL fine-tuning: two text encoders, pooled embeddings, size/crop conditioning."""

from __future__ import annotations

import torch

from .ddpm import DDPMRecipe

IDS = ("input_ids", "input_ids_2")  # the two tokenizers' ids in a batch


class SDXLRecipe(DDPMRecipe):
    """The UNet takes ``added_cond_kwargs={"text_embeds": pooled, "time_ids": sizes}`` (Podell et al., 2023 §2.2)."""

    family, family_tag = "Stable Diffusion XL", "stable-diffusion-xl"

    def load(self) -> None:
        from diffusers import StableDiffusionXLPipeline
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        cfg = self.cfg
        self.pipeline_cls = StableDiffusionXLPipeline
        path = self.load_denoising_parts()
        common = {"revision": cfg.revision, "cache_dir": cfg.cache_dir}
        self.tokenizers = [
            CLIPTokenizer.from_pretrained(path, subfolder=f, **common) for f in ("tokenizer", "tokenizer_2")
        ]
        self.text_encoders = [
            CLIPTextModel.from_pretrained(path, subfolder="text_encoder", variant=cfg.variant, **common),
            CLIPTextModelWithProjection.from_pretrained(
                path, subfolder="text_encoder_2", variant=cfg.variant, **common
            ),
        ]

    def vae_in_fp32(self) -> bool:
        # diffusers' SDXL scripts keep the stock VAE in fp32 (force_upcast); a separate fp16-fix VAE need not.
        return self.cfg.pretrained_vae_model_name_or_path is None and bool(self.vae.config.get("force_upcast", True))

    def text_components(self) -> dict:
        te1, te2 = self.text_encoders
        tok1, tok2 = self.tokenizers
        return {"text_encoder": te1, "text_encoder_2": te2, "tokenizer": tok1, "tokenizer_2": tok2}

    def tokenize(self, captions: list[str]) -> dict:
        """Token ids for each encoder, (B, 77) each: ``input_ids`` and ``input_ids_2``."""
        return {key: tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                               truncation=True, return_tensors="pt").input_ids
                for key, tokenizer in zip(IDS, self.tokenizers)}  # fmt: skip

    def encode_ids(self, encoded: dict) -> dict:
        """Penultimate hidden states of both encoders, concatenated; pooled output of the second."""
        hidden_states = []
        for key, encoder in zip(IDS, self.text_encoders):
            out = encoder(encoded[key].to(self.device), output_hidden_states=True, return_dict=False)
            pooled = out[0]  # the last encoder's projected pooled output, (B, C2)
            hidden_states.append(out[-1][-2])  # (B, 77, Ci)
        return {"encoder_hidden_states": torch.cat(hidden_states, dim=-1), "pooled": pooled.float()}

    def micro_conditioning(self, batch: dict) -> dict[str, torch.Tensor]:
        """add_time_ids = original size + crop top-left + target size (diffusers ``compute_time_ids``), (B, 6); the
        target is the batch's (bucket's) pixel size."""
        n = batch["pixel_values"].shape[0]
        target = torch.tensor([batch["pixel_values"].shape[-2:]]).expand(n, 2)  # (B, 2): (height, width)
        return {"time_ids": torch.cat([batch["original_sizes"], batch["crop_top_lefts"], target], dim=1).float()}

    def predict(
        self, model: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, encoded: dict
    ) -> torch.Tensor:
        cond = {"text_embeds": encoded["pooled"].to(self.device), "time_ids": encoded["time_ids"].to(self.device)}
        context = encoded["encoder_hidden_states"].to(self.device)
        return model(noisy, timesteps, context, added_cond_kwargs=cond, return_dict=False)[0]


class SDXLLoRARecipe(SDXLRecipe):
    """LoRA (PEFT) on the UNet's attention projections; the rest frozen."""

    lora = True
