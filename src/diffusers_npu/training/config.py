"""The frozen training configuration the package receives. ``argparse`` Namespaces stop at the example script."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields

from ..errors import UserError


def _compile_backends() -> list[str]:
    """torch.compile's registered backend names (torch._dynamo.list_backends, experimental ones included)."""
    if not hasattr(_compile_backends, "names"):
        import torch._dynamo

        from .. import devices

        devices.is_npu_available()  # importing torch_npu registers its backends

        _compile_backends.names = sorted(torch._dynamo.list_backends(exclude_tags=()))
    return _compile_backends.names


@dataclass(frozen=True)
class TrainConfig:
    """The settings every recipe shares, named as the flag that sets it (diffusers' names; training/args.py).

    A recipe's own settings live in a subclass (:class:`DDPMConfig`, :class:`FluxLoRAConfig`), so a flag reaches
    only the recipes it means something to; each class validates its own fields in ``_checks``."""

    # model and output
    pretrained_model_name_or_path: str = "tiny:sd15"
    single_file_config: str | None = None  # configs for a single-file model (a diffusers folder or hub id)
    original_config: str | None = None  # or its original YAML
    revision: str | None = None
    variant: str | None = None
    output_dir: str = "outputs/run"
    cache_dir: str | None = None
    seed: int = 0
    # data
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_data_dir: str | None = None
    image_column: str | None = None
    caption_column: str | None = None
    max_train_samples: int | None = None
    resolution: int = 512
    center_crop: bool = False
    random_flip: bool = False
    image_interpolation_mode: str = "bilinear"
    dataloader_num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    cache_latents: bool = False
    cache_latents_to_disk: bool = False
    latent_cache_dir: str | None = None  # default: <output_dir>/latent_cache
    # optimization
    optimizer: str = "adamw"
    learning_rate: float = 1e-4
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    clip_grad_norm_fused: bool = False
    # loop
    train_batch_size: int = 1
    num_train_epochs: int = 1
    max_train_steps: int | None = None
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    allow_changed_settings: bool = False  # resume although the checkpoint was written with other settings
    max_skipped_steps: int = 20  # fp16 overflow skips in a row before the run counts as diverged
    validation_prompt: str | None = None
    validation_prompts: tuple[str, ...] | None = None  # several, or one text file of prompts
    validation_negative_prompt: str | None = None
    validation_epochs: int = 1
    validation_steps: int | None = None
    num_validation_images: int = 2
    validation_seed: int | None = None
    validation_inference_steps: int = 20
    logging_steps: int = 10
    timing_warmup_steps: int = 2
    report_to: str | None = None
    logging_dir: str = "logs"
    # device and precision
    device: str | None = None
    mixed_precision: str = "no"
    attention: str = "sdpa"
    loss_scale: str = "dynamic"
    init_loss_scale: float = 2.0**16
    allow_tf32: bool = False
    torch_compile: str | None = None  # a torch.compile backend name

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> TrainConfig:
        """Build from parsed flags; flags an example does not define keep their defaults."""
        cfg = cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """One-line errors for settings that are wrong before anything runs: any number that is not finite
        (NaN and inf are never a setting), then each class's range checks."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{f.name} {value} is not a finite number")
        for ok, message in self._checks():
            if not ok:
                raise UserError(message)

    def _checks(self) -> list[tuple[object, str]]:
        seeds = [s for s in (self.seed, self.validation_seed) if s is not None]
        backends = _compile_backends() if self.torch_compile else []
        return [
            (self.learning_rate > 0, f"--learning_rate {self.learning_rate} must be > 0, e.g. 1e-4"),
            (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "--adam_beta1 and --adam_beta2 must be in [0, 1), e.g. 0.9 and 0.999"),
            (self.adam_epsilon > 0 and self.adam_weight_decay >= 0, "--adam_epsilon must be > 0 and --adam_weight_decay >= 0"),
            (self.max_grad_norm >= 0, "--max_grad_norm must be >= 0 (0 disables clipping)"),
            (self.init_loss_scale > 0, "--init_loss_scale must be > 0, e.g. 65536"),
            (all(0 <= s < 2**32 for s in seeds), f"--seed / --validation_seed must be in [0, 2**32) (numpy's seed range), got {seeds}"),
            (self.dataloader_num_workers >= 0, "--dataloader_num_workers must be >= 0 (0: load in the training process)"),
            (self.logging_steps >= 1 and self.lr_warmup_steps >= 0 and self.timing_warmup_steps >= 0, "--logging_steps must be >= 1, --lr_warmup_steps and --timing_warmup_steps >= 0"),
            (self.max_train_samples is None or self.max_train_samples >= 1, "--max_train_samples must be >= 1"),
            (self.max_skipped_steps >= 0, "--max_skipped_steps must be >= 0"),
            (self.torch_compile is None or self.torch_compile in backends, f"--torch_compile {self.torch_compile!r} is not a torch.compile backend here; use inductor (default) or one of {', '.join(b for b in backends if 'TESTING' not in b)}"),
            (self.resolution % 8 == 0 and self.resolution > 0, f"--resolution {self.resolution} must be a positive multiple of 8 (the VAE downsamples by 8)"),
            (self.train_batch_size >= 1, "--train_batch_size must be >= 1"),
            (self.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be >= 1"),
            (self.max_train_steps is None or self.max_train_steps >= 1, "--max_train_steps must be >= 1"),
            (self.num_train_epochs >= 1, "--num_train_epochs must be >= 1"),
            (self.checkpointing_steps >= 1, "--checkpointing_steps must be >= 1"),
            (self.validation_epochs >= 1 and self.num_validation_images >= 1 and self.validation_inference_steps >= 1,
             "--validation_epochs, --num_validation_images and --validation_inference_steps must be >= 1"),
            (self.validation_steps is None or self.validation_steps >= 1, "--validation_steps must be >= 1"),
            (self.checkpoints_total_limit is None or self.checkpoints_total_limit >= 1, f"--checkpoints_total_limit {self.checkpoints_total_limit} must be >= 1 (the checkpoints kept, the newest counted); leave it unset to keep all"),
            (self.mixed_precision in ("no", "fp16", "bf16"), f"--mixed_precision {self.mixed_precision!r}: use no, fp16 or bf16"),
            (not (self.caches and self.random_flip), "--random_flip cannot be combined with --cache_latents / --cache_latents_to_disk (a cached latent has one orientation); drop one"),
        ]  # fmt: skip

    @property
    def caches(self) -> bool:
        """Whether the encoders' output is cached (in RAM or on disk) instead of computed every step."""
        return self.cache_latents or self.cache_latents_to_disk


@dataclass(frozen=True)
class ImageDataConfig(TrainConfig):
    """Image-caption data as people keep it (kohya sd-scripts' flag names): caption files, caption options,
    repeats, aspect-ratio buckets, bad files (training/data.py ``image_caption_dataset``)."""

    caption_extension: str | None = None
    caption_dropout_rate: float = 0.0
    shuffle_caption: bool = False
    keep_tokens: int = 0
    dataset_repeats: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bad_images: str = "error"

    def _checks(self) -> list[tuple[object, str]]:
        step = self.bucket_reso_steps
        varying = self.caption_dropout_rate > 0 or self.shuffle_caption
        return super()._checks() + [
            (0.0 <= self.caption_dropout_rate <= 1.0, "--caption_dropout_rate must be in [0, 1]"),
            (self.keep_tokens >= 0 and self.dataset_repeats >= 1, "--keep_tokens must be >= 0 and --dataset_repeats >= 1"),
            (self.bad_images in ("error", "skip"), f"--bad_images {self.bad_images!r}: use error or skip"),
            (not self.enable_bucket or (step > 0 and step % 8 == 0), f"--bucket_reso_steps {step} must be a positive multiple of 8 (the VAE downsamples by 8)"),
            (not self.enable_bucket or (self.min_bucket_reso % step == 0 and self.max_bucket_reso % step == 0 and 0 < self.min_bucket_reso <= self.resolution <= self.max_bucket_reso),
             f"--min_bucket_reso {self.min_bucket_reso} <= --resolution {self.resolution} <= --max_bucket_reso {self.max_bucket_reso}, both multiples of --bucket_reso_steps {step}"),
            (not (self.caches and varying), "--cache_latents stores one text embedding per image; it cannot be combined with --caption_dropout_rate or --shuffle_caption"),
        ]  # fmt: skip


@dataclass(frozen=True)
class DDPMConfig(ImageDataConfig):
    """SD 1.x/2.x and SDXL: DDPM noising of a UNet, full fine-tune or LoRA (training/recipes/ddpm.py)."""

    pretrained_vae_model_name_or_path: str | None = None
    prediction_type: str | None = None
    proportion_empty_prompts: float = 0.0
    use_ema: bool = False
    ema_decay: float = 0.9999
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    rank: int = 4  # LoRA scripts only
    lora_alpha: int | None = None
    lora_format: str = "diffusers"
    train_text_encoder: bool = False  # LoRA scripts: LoRA on the CLIP text encoder(s) too

    def _checks(self) -> list[tuple[object, str]]:
        return super()._checks() + [
            (self.rank >= 1, f"--rank {self.rank} must be >= 1 (the LoRA rank)"),
            (self.lora_alpha is None or self.lora_alpha > 0, f"--lora_alpha {self.lora_alpha} must be > 0"),
            (self.lora_format in ("diffusers", "kohya"), f"--lora_format {self.lora_format!r}: use diffusers or kohya"),
            (not (self.train_text_encoder and self.caches), "--train_text_encoder cannot be combined with --cache_latents / --cache_latents_to_disk (the text embeddings change while training); drop one"),
            (0.0 <= self.proportion_empty_prompts <= 1.0, "--proportion_empty_prompts must be in [0, 1]"),
            (0.0 <= self.ema_decay <= 1.0, "--ema_decay must be in [0, 1], e.g. 0.9999"),
            (self.snr_gamma is None or self.snr_gamma > 0, "--snr_gamma must be > 0 (5.0 is the paper's choice)"),
            (self.noise_offset >= 0, "--noise_offset must be >= 0, e.g. 0.05"),
        ]  # fmt: skip


# diffusers.training_utils.compute_density_for_timestep_sampling / compute_loss_weighting_for_sd3 names.
WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")


@dataclass(frozen=True)
class FluxLoRAConfig(ImageDataConfig):
    """FLUX.1 DreamBooth LoRA: flow matching of a FluxTransformer2DModel (training/recipes/flux_lora.py)."""

    rank: int = 4
    lora_alpha: int | None = None
    lora_format: str = "diffusers"
    train_text_encoder: bool = False
    # DreamBooth (training/dreambooth_data.py)
    instance_data_dir: str | None = None
    instance_prompt: str | None = None
    class_data_dir: str | None = None
    class_prompt: str | None = None
    with_prior_preservation: bool = False
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    sample_batch_size: int = 4
    # flow matching
    guidance_scale: float = 3.5
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    max_sequence_length: int = 512
    cache_text_embeddings: bool = False
    lora_layers: str | None = None

    @property
    def per_image_captions(self) -> bool:
        """Captions from the data (upstream's --dataset_name / --caption_column, or caption files), not
        --instance_prompt for every image."""
        return bool(self.dataset_name or self.caption_column or self.caption_extension)

    def _checks(self) -> list[tuple[object, str]]:
        return super()._checks() + [
            (not (self.dataset_name and (self.instance_data_dir or self.train_data_dir)), "pass either --dataset_name or --instance_data_dir, not both"),
            (self.rank >= 1, f"--rank {self.rank} must be >= 1 (the LoRA rank)"),
            (self.lora_alpha is None or self.lora_alpha > 0, f"--lora_alpha {self.lora_alpha} must be > 0"),
            (self.lora_format == "diffusers", "--lora_format kohya is for SD/SDXL: diffusers has no kohya writer for FLUX; keep the diffusers format (ComfyUI reads it)"),
            (self.instance_prompt, "--instance_prompt is required, e.g. --instance_prompt 'a photo of sks dog'"),
            (self.weighting_scheme in WEIGHTING_SCHEMES, f"--weighting_scheme {self.weighting_scheme!r}: use one of {', '.join(WEIGHTING_SCHEMES)}"),
            (self.prior_loss_weight >= 0, "--prior_loss_weight must be >= 0"),
            (self.logit_std > 0, "--logit_std must be > 0"),
            (self.num_class_images >= 1 and self.sample_batch_size >= 1, "--num_class_images and --sample_batch_size must be >= 1"),
            (self.max_sequence_length >= 1, "--max_sequence_length must be >= 1"),
            (not (self.cache_text_embeddings and self.train_text_encoder), "--cache_text_embeddings cannot be combined with --train_text_encoder (the CLIP embeddings change); drop one"),
            (not self.with_prior_preservation or (self.class_data_dir and self.class_prompt), "--with_prior_preservation needs --class_data_dir and --class_prompt"),
            (not self.enable_bucket or self.bucket_reso_steps % 16 == 0, f"--bucket_reso_steps {self.bucket_reso_steps} must be a multiple of 16 for FLUX (VAE 8 x 2x2 patches)"),
            (not (self.enable_bucket and self.with_prior_preservation), "--enable_bucket cannot be combined with --with_prior_preservation (class images are square and share each batch); drop one"),
        ]  # fmt: skip

    def validate(self) -> None:
        super().validate()
        from .dreambooth_data import list_images

        if self.dataset_name is None:  # before any model loads
            list_images(self.instance_data_dir or self.train_data_dir, "--instance_data_dir")
