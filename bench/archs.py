"""The models bench/train_throughput.py trains: random weights in the exact architectures, no download.

Speed does not depend on the weights' values. Configs are written out from each model's diffusers/transformers
``config.json``; parameter counts are given so a typo shows up.
"""

from __future__ import annotations

from dataclasses import dataclass

import diffusers
import torch
import transformers

from diffusers_npu import tiny

ARCHS = ("tiny-sd21", "sd21", "sdxl")

# fmt: off
# UNet2DConditionModel config of stabilityai/stable-diffusion-2-1 (768-v): 865.9M parameters.
SD21_UNET = dict(sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=1024, use_linear_projection=True, upcast_attention=True)
# stabilityai/stable-diffusion-xl-base-1.0 UNet: 2567.5M parameters; 2816 = 6 size/crop ids x 256 + pooled 1280.
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
# The SD VAE (kl-f8, 83.7M); SDXL's has the same layout with another scaling factor and runs in fp32 (force_upcast).
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
CLIP_TOKENS = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
# OpenCLIP ViT-H/14 text tower as SD2.1 uses it, 340.4M: 23 of 24 layers (penultimate). CLIPTextModel has no
# projection, so projection_dim does not change the cost.
OPENCLIP_H = dict(CLIP_TOKENS, hidden_size=1024, num_hidden_layers=23, num_attention_heads=16, intermediate_size=4096,
                  projection_dim=1024, hidden_act="gelu")
CLIP_L = dict(CLIP_TOKENS, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
              projection_dim=768, hidden_act="quick_gelu")  # SDXL text_encoder, 123.1M
OPENCLIP_BIGG = dict(CLIP_TOKENS, hidden_size=1280, num_hidden_layers=32, num_attention_heads=20, intermediate_size=5120,
                     projection_dim=1280, hidden_act="gelu")  # SDXL text_encoder_2 with projection, 694.7M
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
# fmt: on


@dataclass
class Models:
    """Frozen encoders, the UNet and the noise schedule; ``sdxl`` selects SDXL's two-encoder conditioning."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list
    scheduler: diffusers.DDPMScheduler
    sdxl: bool = False


def build_models(arch: str, seed: int) -> Models:
    """Random-weight models of ``arch`` (fp32, CPU), seeded: every variant starts from a copy of the same ones."""
    if arch == "tiny-sd21":
        pipe = tiny.build_pipeline("sd21", seed)
        sched = diffusers.DDPMScheduler.from_config(pipe.scheduler.config)
        return Models(pipe.unet, pipe.vae, [pipe.text_encoder], sched)
    torch.manual_seed(seed)
    clip = transformers.CLIPTextConfig
    if arch == "sd21":
        tes = [transformers.CLIPTextModel(clip(**OPENCLIP_H))]
        unet, vae, prediction = SD21_UNET, dict(SD_VAE, scaling_factor=0.18215), "v_prediction"
    else:
        tes = [
            transformers.CLIPTextModel(clip(**CLIP_L)),
            transformers.CLIPTextModelWithProjection(clip(**OPENCLIP_BIGG)),
        ]
        unet, vae, prediction = SDXL_UNET, dict(SD_VAE, scaling_factor=0.13025, force_upcast=True), "epsilon"
    sched = diffusers.DDPMScheduler(**SCHEDULE, prediction_type=prediction)
    unet = diffusers.UNet2DConditionModel(**unet)
    return Models(unet, diffusers.AutoencoderKL(**vae), tes, sched, sdxl=arch == "sdxl")


def make_inputs(batch: int, resolution: int, seed: int, text_config) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random images ``(B, 3, H, W)`` in [-1, 1] and token ids ``(B, S)`` (BOS ... EOS) drawn from
    ``text_config``'s vocabulary (a CLIPTextConfig: the tiny models' is not CLIP's 49,408 tokens), on CPU."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, resolution, resolution, generator=gen) * 2 - 1
    ids = torch.randint(0, text_config.vocab_size - 2, (batch, text_config.max_position_embeddings), generator=gen)
    ids[:, 0], ids[:, -1] = text_config.bos_token_id, text_config.eos_token_id
    return pixels, ids
