"""FLUX.1 DreamBooth LoRA: rectified-flow training of PEFT LoRA layers on FluxTransformer2DModel (and CLIP).

The hooks follow diffusers' ``train_dreambooth_lora_flux.py`` and MindONE's FLUX.1 DreamBooth LoRA port:

- Precision plan (MindONE's): VAE, CLIP, T5 and the transformer's base weights are frozen in the mixed
  precision (bf16 by default, fp16 selectable; fp32 with ``--mixed_precision no``); LoRA weights are kept in fp32
  (``cast_training_params``) and computed in the mixed precision under the loop's autocast. Logged at start.
- Training pair: x_t = (1 - sigma) x_0 + sigma * noise, target = noise - x_0 (rectified flow; Esser et al. 2024,
  "Scaling Rectified Flow Transformers", eq. 3 and §3.1 for the timestep densities and loss weightings).
- Latents are packed 2x2 into tokens for the transformer and unpacked for the loss, as upstream.
- Prior preservation (Ruiz et al. 2023): instance and class rows share a batch; :func:`loss_weights` turns the
  loop's weighted per-sample mean into upstream's ``instance loss + prior_loss_weight * class loss``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import ClassVar

import torch

from ... import attention, devices
from ...errors import UserError
from .. import data
from ..config import FluxLoRAConfig
from ..dreambooth_data import DreamBoothDataset, ensure_class_images, folder_rows, list_images
from ..model_card import ModelCardInfo
from .common import CLIP_LORA_TARGETS, UNET_LORA_TARGETS, lora_config, model_source, per_sample_mse, pixels

logger = logging.getLogger("diffusers_npu.train")

TRANSFORMER_LORA_TARGETS = UNET_LORA_TARGETS  # to_k, to_q, to_v, to_out.0 of every FLUX attention block


def add_lora(model: torch.nn.Module, cfg: FluxLoRAConfig, targets: tuple[str, ...], flag: str) -> None:
    """PEFT LoRA (gaussian init, alpha = rank unless --lora_alpha) on ``targets``; unknown names are an error.

    A target matches a module whose name is it or ends with ``.<target>`` (PEFT's suffix rule).
    """
    names = [name for name, _ in model.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            default = ",".join(TRANSFORMER_LORA_TARGETS)
            raise UserError(f"{flag}: {type(model).__name__} has no module {target!r}; e.g. --lora_layers {default}")
    model.add_adapter(lora_config(cfg.rank, cfg.lora_alpha, targets))


def precision_plan(modules: dict[str, torch.nn.Module], compute_dtype: torch.dtype) -> list[str]:
    """One line per module: frozen and trainable parameter dtypes and counts, and the compute dtype."""

    def describe(params: list[torch.nn.Parameter]) -> str:
        dtypes = "/".join(sorted({str(p.dtype).removeprefix("torch.") for p in params})) or "-"
        return f"{dtypes} {sum(p.numel() for p in params)} params"

    compute = str(compute_dtype).removeprefix("torch.")
    lines = []
    for name, module in modules.items():
        params = list(module.parameters())
        frozen, trained = [p for p in params if not p.requires_grad], [p for p in params if p.requires_grad]
        lines.append(f"precision {name}: frozen {describe(frozen)}, trainable {describe(trained)}, compute {compute}")
    return lines


def loss_weights(
    scheme: str, sigmas: torch.Tensor, is_prior: torch.Tensor | None = None, prior_loss_weight: float = 1.0
) -> torch.Tensor:
    """Per-sample weights (B,) for the loop's ``mean(weight * per-sample MSE)``.

    Equals diffusers' ``mean_instance(w * mse) + prior_loss_weight * mean_class(w * mse)`` for any split of the
    batch, w being ``compute_loss_weighting_for_sd3(scheme, sigmas)``. ``sigmas`` is (B,) or (B, 1, 1, 1).
    """
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    weights = compute_loss_weighting_for_sd3(scheme, sigmas).flatten().float()  # (B,)
    if is_prior is None or not bool(is_prior.any()):
        return weights
    is_prior = is_prior.to(weights.device)
    n, n_prior = weights.shape[0], int(is_prior.sum())
    scale = torch.where(is_prior, prior_loss_weight * n / n_prior, n / max(n - n_prior, 1))
    return weights * scale


class FluxDenoiser(torch.nn.Module):
    """The trained modules as one module, so accelerate wraps (DDP) all of them: the transformer, and the CLIP
    text encoder with ``--train_text_encoder`` (its pooled output is recomputed with gradients from token ids)."""

    def __init__(self, transformer: torch.nn.Module, text_encoder: torch.nn.Module | None = None):
        super().__init__()
        self.transformer, self.text_encoder = transformer, text_encoder

    def forward(self, hidden_states, timestep, guidance, img_ids, txt_ids, prompt_embeds, pooled=None, clip_ids=None):
        if clip_ids is not None:
            pooled = self.text_encoder(clip_ids, output_hidden_states=False).pooler_output  # (B, 768)
        return self.transformer(
            hidden_states=hidden_states, timestep=timestep, guidance=guidance, pooled_projections=pooled,
            encoder_hidden_states=prompt_embeds, txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
        )[0]  # fmt: skip


class FluxLoRARecipe:
    """FLUX.1 DreamBooth LoRA: the loop's contract (training/recipe.py) implemented directly. The trained model
    is a :class:`FluxDenoiser` (``self.denoiser``), built in ``prepare``."""

    config_cls: ClassVar[type[FluxLoRAConfig]] = FluxLoRAConfig

    def __init__(self, cfg: FluxLoRAConfig):
        self.cfg = cfg
        self._text_cache: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        from .. import args

        args.add_lora_args(parser, text_encoder=True)
        args.add_dreambooth_args(parser)
        args.add_image_data_args(parser)
        args.add_flux_args(parser)
        parser.set_defaults(mixed_precision="bf16")  # MindONE's FLUX precision plan: frozen weights in bf16

    def load(self) -> None:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        cfg = self.cfg
        self.pipeline_cls = FluxPipeline
        self.model_path = path = model_source(cfg, FluxPipeline)
        common = {"revision": cfg.revision, "cache_dir": cfg.cache_dir}
        weights = {**common, "variant": cfg.variant}
        self.tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **common)
        self.tokenizer_2 = T5TokenizerFast.from_pretrained(path, subfolder="tokenizer_2", **common)
        self.text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **weights)
        self.text_encoder_2 = T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2", **weights)
        # The diffusers models load straight in the frozen precision: the fp32 FLUX.1 transformer is 48 GB.
        dtype = devices.parse_dtype(cfg.mixed_precision)
        self.vae = AutoencoderKL.from_pretrained(path, subfolder="vae", dtype=dtype, **weights)
        self.transformer = FluxTransformer2DModel.from_pretrained(
            path, subfolder="transformer", dtype=dtype, **weights
        )
        self.noise_scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler", **common)
        self.text_encoders = [self.text_encoder, self.text_encoder_2]

    def prepare(self, device: torch.device, device_kind: str, weight_dtype: torch.dtype) -> None:
        """Freeze and cast everything to the mixed precision, add LoRA, keep LoRA in fp32, choose attention."""
        from accelerate import PartialState
        from diffusers.training_utils import cast_training_params

        cfg = self.cfg
        self.device, self.weight_dtype = device, weight_dtype
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if cfg.resolution % (2 * self.vae_scale_factor):
            raise UserError(
                f"--resolution {cfg.resolution} must be a multiple of {2 * self.vae_scale_factor} for FLUX"
            )
        modules = {"vae": self.vae, "text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2,
                   "transformer": self.transformer}  # fmt: skip
        for module in modules.values():
            module.requires_grad_(False).to(device).eval()
            if module.dtype != weight_dtype:  # the diffusers models were loaded in it (their .to(dtype) warns)
                module.to(dtype=weight_dtype)
        targets = tuple(t.strip() for t in cfg.lora_layers.split(",")) if cfg.lora_layers else TRANSFORMER_LORA_TARGETS
        add_lora(self.transformer, cfg, targets, "--lora_layers")
        trained = [self.transformer]
        if cfg.train_text_encoder:
            add_lora(self.text_encoder, cfg, CLIP_LORA_TARGETS, "--train_text_encoder")
            trained.append(self.text_encoder)
        cast_training_params(trained, dtype=torch.float32)  # only the LoRA weights: they are the trainable ones
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
            if cfg.train_text_encoder:
                self.text_encoder.gradient_checkpointing_enable()
        attention.set_attention(self.transformer, cfg.attention, device_kind, weight_dtype)
        for module in trained:
            module.train()
        # The scheduler's training grid (1000 sigmas, no shift with FLUX.1-dev's dynamic shifting), kept apart
        # from the pipelines' schedulers, whose set_timesteps rewrites it.
        self.train_sigmas = self.noise_scheduler.sigmas.clone()
        self.train_timesteps = self.noise_scheduler.timesteps.clone()
        self.denoiser = FluxDenoiser(self.transformer, self.text_encoder if cfg.train_text_encoder else None)
        if PartialState().is_main_process:
            for line in precision_plan(modules, weight_dtype):
                logger.info(line)

    def cache_identity(self) -> str:
        cfg = self.cfg
        return json.dumps([type(self).__name__, self.model_path, cfg.revision, cfg.variant, str(self.weight_dtype),
                           cfg.max_sequence_length, cfg.train_text_encoder])  # fmt: skip

    def frozen_encoders(self) -> list[torch.nn.Module]:
        clip = [] if self.cfg.train_text_encoder else [self.text_encoder]  # a trained CLIP runs in every step
        return [self.vae, self.text_encoder_2, *clip]

    def trainable_model(self) -> torch.nn.Module:
        return self.denoiser

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def make_ema(self) -> None:
        return None  # LoRA: no EMA

    def batch_sampler(self, dataset: DreamBoothDataset, num_replicas: int):
        """Same-shape batches with --enable_bucket (no class images then); otherwise the loop's shuffle."""
        if not self.cfg.enable_bucket:
            return None
        return data.bucket_sampler(dataset.instance, self.cfg.train_batch_size, num_replicas, self.cfg.seed)

    def collate(self, examples: list[dict]) -> dict:
        return DreamBoothDataset.collate(examples)

    def build_dataset(self) -> DreamBoothDataset:
        """Instance images (and class images, generated by the base model where missing) as one dataset."""
        from accelerate import PartialState

        cfg = self.cfg
        image = (cfg.resolution, cfg.center_crop, cfg.image_interpolation_mode)
        folder = cfg.instance_data_dir or cfg.train_data_dir
        # Checked, captioned, repeated and bucketed as the text-to-image data; the captions are upstream's
        # --dataset_name/--caption_column or kohya caption files, else --instance_prompt for every image.
        if cfg.per_image_captions:
            instance = data.image_caption_dataset(cfg, folder)
        else:
            images = list_images(folder, "--instance_data_dir")
            instance = data.image_caption_dataset(
                cfg, rows=[{"image": str(p), "text": cfg.instance_prompt} for p in images]
            )
        klass = None
        if cfg.with_prior_preservation:
            # The main process generates; the others wait and then find the images (LoRA B = 0: the base model).
            with PartialState().main_process_first():
                klass = ensure_class_images(
                    cfg.class_data_dir, cfg.class_prompt, cfg.num_class_images,
                    lambda: self._pipeline(self.transformer, self.text_encoder),
                    cfg.resolution, cfg.sample_batch_size, cfg.seed,
                )  # fmt: skip
        klass_rows = None if klass is None else folder_rows(klass, cfg.class_prompt, *image, cfg.seed + 1)
        return DreamBoothDataset(instance, klass_rows)

    # ---- per step ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_batch(self, batch: dict) -> dict:
        """Pixels to shifted, scaled latents (with the random flip) and prompts to T5 / CLIP embeddings."""
        images = pixels(batch, self.device, self.vae.dtype, self.cfg.random_flip)
        vae = self.vae.config
        latents = (self.vae.encode(images).latent_dist.sample() - (vae.shift_factor or 0.0)) * vae.scaling_factor
        captions = list(batch["captions"])
        is_prior = batch.get("is_prior", torch.zeros(len(captions), dtype=torch.bool))
        return {"latents": latents.float(), "is_prior": is_prior, **self.encode_text(captions)}

    def encode_text(self, captions: list[str]) -> dict:
        """T5 sequence embeddings and CLIP pooled embeddings (or CLIP token ids with --train_text_encoder).

        ``--cache_text_embeddings``: each distinct prompt is encoded once (DreamBooth has one or two).
        """
        if not self.cfg.cache_text_embeddings:
            return self._run_text_encoders(captions)
        new = [c for c in dict.fromkeys(captions) if c not in self._text_cache]
        if new:
            encoded = self._run_text_encoders(new)
            self._text_cache.update({c: {k: v[i] for k, v in encoded.items()} for i, c in enumerate(new)})
        return {k: torch.stack([self._text_cache[c][k] for c in captions]) for k in self._text_cache[captions[0]]}

    def _run_text_encoders(self, captions: list[str]) -> dict:
        def tokenize(tokenizer, length: int) -> torch.Tensor:  # as FluxPipeline._get_{clip,t5}_prompt_embeds
            return tokenizer(captions, padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)  # fmt: skip

        t5_ids = tokenize(self.tokenizer_2, self.cfg.max_sequence_length)
        out = {"prompt_embeds": self.text_encoder_2(t5_ids, output_hidden_states=False)[0]}  # (B, S, 4096)
        clip_ids = tokenize(self.tokenizer, self.tokenizer.model_max_length)  # (B, 77)
        if self.cfg.train_text_encoder:
            out["clip_ids"] = clip_ids  # CLIP runs inside FluxDenoiser, with gradients for its LoRA
        else:
            out["pooled"] = self.text_encoder(clip_ids, output_hidden_states=False).pooler_output  # (B, 768)
        return out

    def per_sample_loss(self, model: torch.nn.Module, encoded: dict) -> torch.Tensor:
        """Rectified-flow loss per example, (B,): the prediction of ``noise - latents`` at sampled sigmas, weighted."""
        from diffusers import FluxPipeline
        from diffusers.training_utils import compute_density_for_timestep_sampling

        cfg, device, dtype = self.cfg, self.device, self.weight_dtype
        latents = encoded["latents"].to(device)  # (B, C, h, w) fp32
        b, c, h, w = latents.shape
        noise = torch.randn_like(latents)
        u = compute_density_for_timestep_sampling(
            cfg.weighting_scheme, b, cfg.logit_mean, cfg.logit_std, cfg.mode_scale
        )
        n = len(self.train_sigmas)
        index = (u * n).long().clamp(0, n - 1)  # "mode" can give u = 1.0
        sigmas = self.train_sigmas[index].to(device)[:, None, None, None]  # (B, 1, 1, 1)
        timesteps = self.train_timesteps[index].to(device)  # (B,) = sigma * 1000
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        packed = FluxPipeline._pack_latents(noisy, b, c, h, w).to(dtype)  # (B, h/2 * w/2, 4C)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)  # (h/2 * w/2, 3)
        prompt_embeds = encoded["prompt_embeds"].to(device, dtype)  # (B, S, D)
        txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:  # FLUX.1-dev: guidance is an input, not CFG
            guidance = torch.full((b,), cfg.guidance_scale, device=device)
        text = {k: encoded[k].to(device) for k in ("pooled", "clip_ids") if k in encoded}
        pred = model(packed, timesteps / 1000, guidance, img_ids, txt_ids, prompt_embeds, **text)
        pred = FluxPipeline._unpack_latents(
            pred, h * self.vae_scale_factor, w * self.vae_scale_factor, self.vae_scale_factor
        )  # (B, C, h, w)
        weights = loss_weights(cfg.weighting_scheme, sigmas, encoded.get("is_prior"), cfg.prior_loss_weight)
        return per_sample_mse(pred, noise - latents) * weights

    # ---- output ------------------------------------------------------------------------------------
    def save_weights(self, model: torch.nn.Module, output_dir: Path) -> None:
        """``pytorch_lora_weights.safetensors`` (fp32, with the LoRA config as metadata) for stock
        ``FluxPipeline.load_lora_weights``."""
        from diffusers import FluxPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        te = model.text_encoder
        FluxPipeline.save_lora_weights(
            save_directory=str(output_dir),
            transformer_lora_layers=get_peft_model_state_dict(model.transformer),
            text_encoder_lora_layers=None if te is None else convert_state_dict_to_diffusers(get_peft_model_state_dict(te, save_embedding_layers=False)),
            transformer_lora_adapter_metadata=model.transformer.peft_config["default"].to_dict(),
            text_encoder_lora_adapter_metadata=None if te is None else te.peft_config["default"].to_dict(),
            safe_serialization=True,
        )  # fmt: skip

    def model_card_info(self) -> ModelCardInfo:
        prompt = self.cfg.instance_prompt.replace('"', "'")
        usage = (f'from diffusers import FluxPipeline\n\npipe = FluxPipeline.from_pretrained("{self.cfg.pretrained_model_name_or_path}")\n'
                 f'pipe.load_lora_weights("{self.cfg.output_dir}")\nimage = pipe("{prompt}").images[0]')  # fmt: skip
        return ModelCardInfo("FLUX.1 DreamBooth LoRA", ("text-to-image", "flux", "lora", "dreambooth"), usage)

    def save_checkpoint_model(self, model: torch.nn.Module, directory: Path) -> None:
        self.save_weights(model, directory)

    def validation_pipeline(self, model: torch.nn.Module):
        te = model.text_encoder if model.text_encoder is not None else self.text_encoder
        return self._pipeline(model.transformer, te)

    def _pipeline(self, transformer: torch.nn.Module, text_encoder: torch.nn.Module):
        """A FluxPipeline over the live modules, with its own copy of the scheduler."""
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.noise_scheduler.config)
        return FluxPipeline(scheduler=scheduler, vae=self.vae, text_encoder=text_encoder, tokenizer=self.tokenizer,
                            text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2, transformer=transformer)  # fmt: skip
