"""Training flags as argument-group functions (diffusers' names), the legacy-flag alias table, ``--config``.

Registry-backed choices (``--optimizer``, ``--attention``) come from the registries, so ``--help`` cannot
drift from the code. The reference port's flags are aliases of those choices, defined once in
:data:`LEGACY_ALIASES`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .. import attention, optim
from ..errors import UserError
from .config import WEIGHTING_SCHEMES, DDPMConfig, FluxLoRAConfig, ImageDataConfig, TrainConfig

# Defaults live in one place: the config dataclasses.
D, IMAGE, DDPM, FLUX = TrainConfig(), ImageDataConfig(), DDPMConfig(), FluxLoRAConfig()


def add_model_args(parser: argparse.ArgumentParser, default_model: str) -> None:
    g = parser.add_argument_group("model and output")
    g.add_argument(
        "--pretrained_model_name_or_path",
        default=default_model,
        help="diffusers model directory, hub id, tiny:<kind> for the built-in tiny model (offline default), or a "
        "single-file .safetensors/.ckpt checkpoint (A1111/ComfyUI)",
    )
    g.add_argument("--single_file_config", default=None,
                   help="a single file's configs: a diffusers folder of the same architecture, tiny:<kind> or a hub id")  # fmt: skip
    g.add_argument("--original_config", default=None, help="a single file's original YAML config (not for SDXL)")
    g.add_argument("--revision", default=None)
    g.add_argument("--variant", default=None)
    g.add_argument("--output_dir", default=D.output_dir)
    g.add_argument("--cache_dir", default=None)
    g.add_argument("--seed", type=int, default=D.seed)  # fmt: skip


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--dataset_name", default=None, help="hub dataset name, or a local dataset directory")
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument(
        "--train_data_dir",
        default=None,
        help="local data: a datasets.save_to_disk dir, parquet files, or an imagefolder with metadata.jsonl",
    )
    g.add_argument("--image_column", default=None)
    g.add_argument("--caption_column", default=None)
    g.add_argument("--max_train_samples", type=int, default=None)
    g.add_argument("--resolution", type=int, default=D.resolution)
    g.add_argument("--center_crop", action="store_true")
    g.add_argument("--random_flip", action="store_true")
    g.add_argument(
        "--image_interpolation_mode",
        default=D.image_interpolation_mode,
        choices=["bilinear", "bicubic", "lanczos", "nearest"],
    )
    g.add_argument("--dataloader_num_workers", type=int, default=D.dataloader_num_workers)
    g.add_argument("--pin_memory", action="store_true", help="pin host memory for device copies")
    g.add_argument("--persistent_workers", action="store_true", help="keep data workers alive across epochs")
    g.add_argument(
        "--cache_latents",
        action="store_true",
        help="compute VAE latents and text embeddings once, in RAM; later epochs skip the encoders",
    )
    g.add_argument(
        "--cache_latents_to_disk",
        action="store_true",
        help="the same cache in sharded safetensors files that later runs reuse (kohya's name)",
    )
    g.add_argument("--latent_cache_dir", default=None,
                   help="where --cache_latents_to_disk keeps its shards (default: OUTPUT_DIR/latent_cache)")  # fmt: skip


def add_optim_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("optimization")
    g.add_argument("--optimizer", default=D.optimizer, choices=list(optim.OPTIMIZERS))
    g.add_argument("--learning_rate", type=float, default=D.learning_rate)
    g.add_argument("--scale_lr", action="store_true", help="multiply the lr by batch x accumulation x processes")
    g.add_argument(
        "--lr_scheduler",
        default=D.lr_scheduler,
        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
    )
    g.add_argument("--lr_warmup_steps", type=int, default=D.lr_warmup_steps)
    g.add_argument("--adam_beta1", type=float, default=D.adam_beta1)
    g.add_argument("--adam_beta2", type=float, default=D.adam_beta2)
    g.add_argument("--adam_weight_decay", type=float, default=D.adam_weight_decay)
    g.add_argument("--adam_epsilon", type=float, default=D.adam_epsilon)
    g.add_argument("--max_grad_norm", type=float, default=D.max_grad_norm, help="0 disables clipping")
    g.add_argument("--clip_grad_norm_fused", action="store_true",
                   help="use the optimizer's fused clip (NPU fused optimizers); gradients are unscaled first")  # fmt: skip


def add_loop_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training loop")
    g.add_argument("--train_batch_size", type=int, default=D.train_batch_size, help="per device")
    g.add_argument("--num_train_epochs", type=int, default=D.num_train_epochs)
    g.add_argument("--max_train_steps", type=int, default=None, help="optimizer steps; overrides --num_train_epochs")
    g.add_argument("--gradient_accumulation_steps", type=int, default=D.gradient_accumulation_steps)
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--checkpointing_steps", type=int, default=D.checkpointing_steps)
    g.add_argument("--checkpoints_total_limit", type=int, default=None)
    g.add_argument("--resume_from_checkpoint", default=None,
                   help="'latest', a checkpoint directory, or a checkpoint name in --output_dir")  # fmt: skip
    g.add_argument("--allow_changed_settings", action="store_true",
                   help="resume although batch size, resolution, model, ... differ from the checkpoint's")  # fmt: skip
    g.add_argument("--max_skipped_steps", type=int, default=D.max_skipped_steps,
                   help="fp16 overflow skips in a row tolerated before the run stops as diverged")  # fmt: skip
    g = parser.add_argument_group("validation images (training/validation.py)")
    g.add_argument("--validation_prompt", default=None, help="one prompt (upstream's DreamBooth/SDXL flag)")
    g.add_argument("--validation_prompts", nargs="+", default=None,
                   help="several prompts, or one text file with a prompt per line")  # fmt: skip
    g.add_argument("--validation_negative_prompt", default=None)
    g.add_argument("--validation_epochs", type=int, default=D.validation_epochs, help="every N epochs")
    g.add_argument("--validation_steps", type=int, default=None, help="also every N optimizer steps")
    g.add_argument("--num_validation_images", type=int, default=D.num_validation_images, help="per prompt")
    g.add_argument("--validation_seed", type=int, default=None, help="default: --seed")
    g.add_argument("--validation_inference_steps", type=int, default=D.validation_inference_steps)
    g = parser.add_argument_group("training loop")
    g.add_argument("--logging_steps", type=int, default=D.logging_steps)
    g.add_argument(
        "--timing_warmup_steps",
        type=int,
        default=D.timing_warmup_steps,
        help="optimizer steps excluded from the step-time median",
    )
    g.add_argument("--report_to", default=None, choices=["tensorboard", "wandb", "all"])
    g.add_argument("--logging_dir", default=D.logging_dir)  # fmt: skip


def add_device_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("device and precision")
    g.add_argument("--device", default=None, help="npu, cuda or cpu (default: detected, npu > cuda > cpu)")
    g.add_argument("--mixed_precision", default=D.mixed_precision, choices=["no", "fp16", "bf16"])
    g.add_argument("--attention", default=D.attention, choices=list(attention.KERNELS))
    g.add_argument(
        "--loss_scale",
        default=D.loss_scale,
        choices=["dynamic", "static"],
        help="fp16 loss scaling; static is torch_npu's fixed scale (the reference's dynamic=False)",
    )
    g.add_argument("--init_loss_scale", type=float, default=D.init_loss_scale)
    g.add_argument("--allow_tf32", action="store_true")
    g.add_argument("--torch_compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="compile the trained model's forward with torch.compile (default backend: inductor); "
                        "the first steps pay the compile time")  # fmt: skip


def add_ddpm_args(parser: argparse.ArgumentParser) -> None:
    """DDPM training of a UNet (SD 1.x/2.x, SDXL): the VAE, prediction type, loss weighting, EMA, prompt dropout."""
    g = parser.add_argument_group("DDPM (UNet) training")
    g.add_argument("--pretrained_vae_model_name_or_path", default=None, help="a separate VAE (SDXL: the fp16-fix VAE)")
    g.add_argument(
        "--prediction_type",
        default=None,
        choices=["epsilon", "v_prediction"],
        help="override the scheduler's prediction type",
    )
    g.add_argument("--use_ema", action="store_true")
    g.add_argument("--ema_decay", type=float, default=DDPM.ema_decay)
    g.add_argument(
        "--snr_gamma", type=float, default=None, help="Min-SNR loss weighting, Hang et al. (2023); 5.0 recommended"
    )
    g.add_argument("--noise_offset", type=float, default=DDPM.noise_offset)
    g.add_argument("--proportion_empty_prompts", type=float, default=DDPM.proportion_empty_prompts)  # fmt: skip


def add_image_data_args(parser: argparse.ArgumentParser) -> None:
    """Image-caption datasets as people keep them (kohya sd-scripts' flag names and meanings)."""
    g = parser.add_argument_group("image-caption data (kohya's flags)")
    g.add_argument(
        "--caption_extension",
        default=None,
        help="caption files beside the images (kohya's layout), e.g. .txt; a folder with no metadata "
        "file and .txt files is read this way without it",
    )
    g.add_argument(
        "--caption_dropout_rate",
        type=float,
        default=IMAGE.caption_dropout_rate,
        help="probability of training an image with the empty caption, drawn per epoch",
    )
    g.add_argument("--shuffle_caption", action="store_true", help="shuffle the comma-separated tags each epoch")
    g.add_argument(
        "--keep_tokens",
        type=int,
        default=IMAGE.keep_tokens,
        help="with --shuffle_caption: the first N tags stay in place",
    )
    g.add_argument(
        "--dataset_repeats",
        type=int,
        default=IMAGE.dataset_repeats,
        help="each image N times per epoch (N_name subfolders multiply it)",
    )
    g.add_argument(
        "--enable_bucket",
        action="store_true",
        help="aspect-ratio buckets of about --resolution^2 pixels instead of square crops",
    )
    g.add_argument("--min_bucket_reso", type=int, default=IMAGE.min_bucket_reso)
    g.add_argument("--max_bucket_reso", type=int, default=IMAGE.max_bucket_reso)
    g.add_argument("--bucket_reso_steps", type=int, default=IMAGE.bucket_reso_steps, help="bucket sides' multiple")
    g.add_argument("--bad_images", default=IMAGE.bad_images, choices=["error", "skip"],
                   help="unreadable, too small or uncaptioned images: stop before training, or leave them out")  # fmt: skip


def add_lora_args(parser: argparse.ArgumentParser, text_encoder: bool) -> None:
    g = parser.add_argument_group("LoRA")
    g.add_argument("--rank", type=int, default=DDPM.rank)
    g.add_argument("--lora_alpha", type=int, default=None, help="default: the rank (scale 1)")
    g.add_argument("--lora_format", default=DDPM.lora_format, choices=["diffusers", "kohya"],
                   help="the saved LoRA file's layout; both load with stock load_lora_weights, kohya's also in "
                        "A1111/ComfyUI (SD/SDXL only)")  # fmt: skip
    if text_encoder:
        g.add_argument("--train_text_encoder", action="store_true")


def add_dreambooth_args(parser: argparse.ArgumentParser) -> None:
    """DreamBooth data and prior preservation (diffusers' train_dreambooth_lora_flux.py names)."""
    g = parser.add_argument_group("DreamBooth")
    g.add_argument(
        "--instance_data_dir",
        default=None,
        help="folder of the subject's images; unset: --train_data_dir (--local_data_dir)",
    )
    g.add_argument(
        "--instance_prompt",
        default=None,
        help="prompt naming the subject, e.g. 'a photo of sks dog'; every image's caption unless the "
        "data has its own (--dataset_name with --caption_column, or --caption_extension files)",
    )
    g.add_argument("--class_data_dir", default=None, help="class images; missing ones are generated here")
    g.add_argument("--class_prompt", default=None, help="prompt of the subject's class, e.g. 'a photo of a dog'")
    g.add_argument(
        "--with_prior_preservation", action="store_true", help="add the class-prior loss (Ruiz et al. 2023)"
    )
    g.add_argument("--prior_loss_weight", type=float, default=FLUX.prior_loss_weight)
    g.add_argument(
        "--num_class_images",
        type=int,
        default=FLUX.num_class_images,
        help="class images wanted; the base model generates the missing ones",
    )
    g.add_argument("--sample_batch_size", type=int, default=FLUX.sample_batch_size, help="class images per pipeline call")  # fmt: skip


def add_flux_args(parser: argparse.ArgumentParser) -> None:
    """Flow-matching training of FLUX: guidance, timestep density and loss weighting, T5 length, LoRA layers."""
    g = parser.add_argument_group("FLUX flow matching")
    g.add_argument(
        "--guidance_scale",
        type=float,
        default=FLUX.guidance_scale,
        help="value fed to the guidance embedding (FLUX.1-dev); the reference trains with 1",
    )
    g.add_argument(
        "--weighting_scheme",
        default=FLUX.weighting_scheme,
        choices=list(WEIGHTING_SCHEMES),
        help="timestep density and loss weighting, Esser et al. (2024) §3.1",
    )
    g.add_argument("--logit_mean", type=float, default=FLUX.logit_mean, help="logit_normal: mean")
    g.add_argument("--logit_std", type=float, default=FLUX.logit_std, help="logit_normal: std")
    g.add_argument("--mode_scale", type=float, default=FLUX.mode_scale, help="mode: scale")
    g.add_argument("--max_sequence_length", type=int, default=FLUX.max_sequence_length, help="T5 tokens per prompt")
    g.add_argument(
        "--cache_text_embeddings",
        action="store_true",
        help="encode each distinct prompt once and reuse it (not with --train_text_encoder)",
    )
    g.add_argument(
        "--lora_layers",
        default=None,
        help="comma-separated transformer modules to adapt; unset: to_k,to_q,to_v,to_out.0",
    )


# The reference port's flags (Ascend ModelZoo diffusers 0.18.1 port, examples/text_to_image/train_text_to_image.py) and diffusers'
# older ones, each an alias that sets a registry choice or a plain flag. One table, nowhere else.
LEGACY_ALIASES: dict[str, tuple[str, object]] = {
    "--use_npu_fuse_adamW": ("optimizer", "npu_fused_adamw"),
    "--use_megatron_npu_adamW": ("optimizer", "megatron_adamw"),
    "--use_8bit_adam": ("optimizer", "adamw_8bit"),
    "--use_clip_grad_norm_fused": ("clip_grad_norm_fused", True),
    "--enable_npu_flash_attention": ("attention", "npu_fa"),
    # xformers is not a dependency; torch SDPA covers the same memory-efficient kernels.
    "--enable_xformers_memory_efficient_attention": ("attention", "sdpa"),
    "--enable_pin_memory": ("pin_memory", True),
    "--enable_persistent_workers": ("persistent_workers", True),
    # The reference checkpointed every other attention block; current diffusers checkpoints whole blocks.
    "--release_part_gradient_checkpointing": ("gradient_checkpointing", True),
}
VALUE_ALIASES = {"--local_data_dir": "train_data_dir"}


def add_legacy_aliases(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("reference (ModelZoo) flags, kept as aliases")
    for flag, (dest, value) in LEGACY_ALIASES.items():
        g.add_argument(
            flag, dest=dest, action="store_const", const=value, help=f"= --{dest} {value}".replace(" True", "")
        )
    for flag, dest in VALUE_ALIASES.items():
        g.add_argument(flag, dest=dest, help=f"= --{dest}")


class _OneLineErrors(argparse.ArgumentParser):
    """argparse's errors (unknown flag, bad choice) as the package's one-line ``error:`` and exit status 2."""

    def error(self, message: str):
        raise UserError(f"{message}; see --help")


def build_parser(description: str, default_model: str, recipe_cls) -> argparse.ArgumentParser:
    """The parser of one training example: the shared groups, the recipe's own (``recipe_cls.add_arguments``),
    the reference's aliases and ``--config``. A flag of another recipe is an unrecognized argument."""
    parser = _OneLineErrors(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file whose keys are these flags' names (flags given win)")
    add_model_args(parser, default_model)
    add_data_args(parser)
    add_optim_args(parser)
    add_loop_args(parser)
    add_device_args(parser)
    recipe_cls.add_arguments(parser)
    add_legacy_aliases(parser)
    return parser


def _apply_yaml(parser: argparse.ArgumentParser, path: str) -> None:
    """Make the YAML file's values the parser defaults; unknown keys are an error, never ignored."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--config {path} does not exist; pass a YAML file of flag: value pairs")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"--config {path} is not valid YAML ({first}); write flag: value lines") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path} must be a mapping of flag names to values")
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:  # a dest's own flag, added before the reference's aliases of it
        actions.setdefault(action.dest, action)
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise UserError(f"--config {path} has unknown keys {unknown}; use the flag names without '--'")
    parser.set_defaults(**{key: _yaml_value(actions[key], value, path) for key, value in values.items()})


def _yaml_value(action: argparse.Action, value, path: str):
    """A ``--config`` value converted as its flag's would be, or a one-line error naming the key."""
    if value is None:
        return None
    if action.nargs == 0:  # store_true / store_const flags
        if not isinstance(value, bool):
            raise UserError(f"--config {path}: {action.dest} is a switch; write true or false, not {value!r}")
        return action.const if value else action.default
    try:
        convert = action.type or (lambda v: v)
        value = [convert(v) for v in value] if isinstance(value, list) else convert(value)
    except (TypeError, ValueError):
        raise UserError(f"--config {path}: {action.dest} {value!r} is not a valid value for --{action.dest}") from None
    if isinstance(value, (dict, list)) and action.nargs is None:
        raise UserError(f"--config {path}: {action.dest} takes one value, not {value!r}")
    if action.choices is not None and value not in action.choices:
        raise UserError(
            f"--config {path}: {action.dest} {value!r} is not one of {', '.join(map(str, action.choices))}"
        )
    return value


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, config_cls: type[TrainConfig]) -> TrainConfig:
    """Parse flags (and ``--config``) into a validated, frozen ``config_cls``."""
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        _apply_yaml(parser, pre.config)
    return config_cls.from_namespace(parser.parse_args(argv))


def parse_recipe_args(recipe_cls, description: str, default_model: str, argv: list[str] | None = None) -> TrainConfig:
    """What an example script does first: ``build_parser`` for ``recipe_cls``, then ``parse`` into its config."""
    return parse(build_parser(description, default_model, recipe_cls), argv, recipe_cls.config_cls)
