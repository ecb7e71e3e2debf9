"""Inference flags as argument-group functions, parsed once into a frozen :class:`InferConfig`.

Scripts in ``test_infer/`` pick the groups their task needs; registry-backed choices (``--sampler``,
``--attention``, ``--discretization``) come from the registries so ``--help`` cannot drift from the code.
Parse errors are one line (``error: ...``, exit 2) like every other bad input.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from pathlib import Path

from .. import attention, samplers
from ..devices import DTYPES
from ..errors import UserError


@dataclass(frozen=True)
class InferConfig:
    """Everything one inference run needs; defaults here are the diffusers defaults for SD."""

    task: str = "text-to-image"
    model_path: str = "tiny:sd15"
    single_file_config: str | None = None  # configs for a single-file --model_path (single_file.py)
    original_config: str | None = None
    refiner_path: str | None = None
    unet_path: str | None = None
    disable_safety_checker: bool = False
    lora_path: tuple[str, ...] = ()  # each PATH or PATH:SCALE (see ``loras``)
    lora_scale: float = 1.0
    textual_inversion_path: str | None = None
    token: str | None = None
    prompt: str = ""
    negative_prompt: str | None = None
    prompts_file: str | None = None
    image: str | None = None
    mask_image: str | None = None
    strength: float = 0.8
    high_noise_frac: float = 0.8
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    seed: int = 0
    batch_size: int = 1
    num_images_per_prompt: int = 1
    sampler: str | None = None
    discretization: str | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None
    eta: float = 0.0
    init_latent_path: str | None = None
    init_noise_path: str | None = None
    dump_latents: bool = False
    dtype: str = "fp32"
    device: str | None = None
    attention: str | None = None
    torch_compile: str | None = None  # a torch.compile backend name for the denoiser
    output_dir: str = "outputs"
    benchmark: int = 1

    def sampler_choice(self) -> samplers.SamplerChoice:
        return samplers.SamplerChoice(self.sampler, self.discretization, self.sigma_min, self.sigma_max, self.rho)

    @property
    def loras(self) -> list[tuple[str, float]]:
        """``(path, scale)`` per ``--lora_path``: ``PATH:SCALE`` when what follows the last ``:`` is a number,
        else ``--lora_scale``."""
        out = []
        for value in self.lora_path:
            path, _, suffix = value.rpartition(":")
            try:
                out.append((path, float(suffix)) if path else (value, self.lora_scale))
            except ValueError:
                out.append((value, self.lora_scale))
        return out


D = InferConfig()


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a one-line UserError (``errors.cli_entry`` prints it, exit 2)."""

    def error(self, message: str):
        raise UserError(f"{message}; see {self.prog} --help")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the script docstring's layout and show every default."""


def new_parser(description: str | None) -> OneLineParser:
    """The parser of a ``test_infer/`` script; ``description`` is its docstring."""
    return OneLineParser(description=description, formatter_class=_HelpFormatter)


def add_model_args(
    parser: argparse.ArgumentParser, default_model: str, refiner: str | None = None, lora_required: bool = False
) -> None:
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model_path",
        default=default_model,
        help="local diffusers model folder, hub id, tiny:<kind> (the built-in offline tiny model), or a single-file "
        ".safetensors/.ckpt checkpoint (A1111/ComfyUI)",
    )
    g.add_argument("--single_file_config", default=None,
                   help="a single file's configs: a diffusers folder of the same architecture, tiny:<kind> or a hub id")  # fmt: skip
    g.add_argument("--original_config", default=None, help="a single file's original YAML config (not for SDXL)")
    if refiner is not None:
        g.add_argument("--refiner_path", default=refiner, help="SDXL refiner: local folder, hub id or tiny:<kind>")
    g.add_argument(
        "--unet_path", default=None, help="replace the UNet with this diffusers UNet folder (e.g. an LCM UNet)"
    )
    g.add_argument(
        "--disable_safety_checker",
        action="store_true",
        help="load without the NSFW safety checker (the reference FAQ's model_index.json edit)",
    )
    g.add_argument(
        "--lora_path",
        action="append",
        default=None,
        required=lora_required,
        help="LoRA weights (a folder or .safetensors; diffusers or kohya format) for load_lora_weights, optionally "
        "with its own scale as PATH:SCALE; repeat the flag to combine several",
    )
    g.add_argument("--lora_scale", type=float, default=D.lora_scale,
                   help="strength of every --lora_path without its own :SCALE; 0 equals no LoRA")  # fmt: skip


def add_textual_inversion_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("textual inversion")
    g.add_argument(
        "--textual_inversion_path",
        required=True,
        help="learned embedding (.bin/.safetensors, or a folder) for load_textual_inversion",
    )
    g.add_argument("--token", default=None, help="token to bind it to (default: the name stored in the file)")  # fmt: skip


def add_prompt_args(parser: argparse.ArgumentParser, default_prompt: str, default_negative: str | None = None) -> None:
    g = parser.add_argument_group("prompts")
    g.add_argument("--prompt", default=default_prompt, help="the text prompt")
    g.add_argument("--negative_prompt", default=default_negative, help="what to steer away from")
    g.add_argument("--prompts_file", default=None, help="one prompt per line; replaces --prompt")


def add_image_args(parser: argparse.ArgumentParser, default_strength: float, mask: bool = False) -> None:
    g = parser.add_argument_group("input image")
    g.add_argument("--image", required=True, help="input image file (resized to --height/--width when given)")
    if mask:
        g.add_argument("--mask_image", required=True, help="mask of the same size: white is repainted")
    g.add_argument(
        "--strength", type=float, default=default_strength, help="how much of the image is re-noised, (0, 1]"
    )


def add_sampling_args(parser: argparse.ArgumentParser, steps: int = D.num_inference_steps,
                      guidance: float = D.guidance_scale, ensemble: bool = False) -> None:  # fmt: skip
    g = parser.add_argument_group("sampling")
    g.add_argument("--num_inference_steps", type=int, default=steps, help="denoising steps (>= 1)")
    g.add_argument("--guidance_scale", type=float, default=guidance, help="classifier-free guidance scale")
    g.add_argument("--height", type=int, default=None, help="pixels, a multiple of 8; None = the model's size")
    g.add_argument("--width", type=int, default=None, help="pixels, a multiple of 8; None = the model's size")
    g.add_argument("--seed", type=int, default=D.seed, help="image k of every prompt uses seed + k")
    g.add_argument("--batch_size", type=int, default=D.batch_size, help="prompts per pipeline call")
    g.add_argument("--num_images_per_prompt", type=int, default=D.num_images_per_prompt, help="images per prompt")
    g.add_argument(
        "--sampler",
        type=samplers.canonical_name,
        choices=list(samplers.SAMPLERS),
        default=None,
        help=samplers.help_text(),
    )
    g.add_argument(
        "--discretization",
        choices=list(samplers.DISCRETIZATIONS),
        default=None,
        help="timestep grid: legacy = MindONE LegacyDDPM (trailing), diffusers = leading + offset 1, "
        "edm = Karras sigmas; None = the scheduler's own",
    )
    g.add_argument("--sigma_min", type=float, default=None, help="edm: smallest sigma; None = the model's")
    g.add_argument("--sigma_max", type=float, default=None, help="edm: largest sigma; None = the model's")
    g.add_argument("--rho", type=float, default=None, help="edm: Karras rho; None = 7")
    g.add_argument("--eta", type=float, default=D.eta, help="DDIM eta; > 0 adds per-step noise")
    if ensemble:
        g.add_argument(
            "--high_noise_frac",
            type=float,
            default=D.high_noise_frac,
            help="fraction of the steps run by the base (denoising_end / denoising_start)",
        )
    g.add_argument(
        "--init_latent_path",
        default=None,
        help="initial latents .npy (images, C, H/f, W/f), before init_noise_sigma scaling; replaces the seed",
    )
    g.add_argument(
        "--init_noise_path",
        default=None,
        help="per-step noise .npy (draws, images, C, H/f, W/f) for " + ", ".join(samplers.NOISE_SAMPLERS),
    )
    g.add_argument("--dump_latents", action="store_true",
                   help="write the initial latents and per-step noise used to init_latents.npy and step_noise.npy "
                        "in --output_dir")  # fmt: skip


def add_device_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("device")
    g.add_argument("--dtype", default=D.dtype, choices=[k for k in DTYPES if k != "no"])
    g.add_argument("--device", default=None, help="npu, cuda, cpu or kind:index; None = detected")
    g.add_argument(
        "--attention",
        choices=list(attention.KERNELS),
        default=None,
        help="attention kernel; None = diffusers' own processors",
    )
    g.add_argument("--torch_compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the denoiser (default backend: inductor); --benchmark N > 1 times it warm")  # fmt: skip


def add_output_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--output_dir", default=D.output_dir, help="PNGs p<prompt>_s<seed>.png and <task>.json go here")
    g.add_argument("--benchmark", type=int, default=D.benchmark, help="repeat the run N times; timings are medians")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"--{name} must be at least 1, got {value}; pass a positive number")


def _looks_like_hub_id(value: str | None) -> bool:
    """``owner/name`` without a file suffix: LoRA and embeddings may come from the hub when it is online."""
    return bool(value) and value.count("/") == 1 and not Path(value).suffix and not value.startswith((".", "/", "~"))


def _check(cfg: InferConfig) -> None:
    """Bad values as one-line errors naming the flag and the fix."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{f.name} {value} is not a finite number")
    for name in ("num_inference_steps", "batch_size", "num_images_per_prompt", "benchmark"):
        _positive(name, getattr(cfg, name))
    for name in ("height", "width"):
        value = getattr(cfg, name)
        if value is not None and (value < 8 or value % 8):
            fixed = max(8, round(value / 8) * 8)
            raise UserError(f"--{name} {value} is not a positive multiple of 8; use e.g. --{name} {fixed}")
    if not 0 < cfg.strength <= 1:
        raise UserError(f"--strength {cfg.strength} is outside (0, 1]; pass e.g. --strength 0.8")
    if cfg.image is not None and int(cfg.num_inference_steps * cfg.strength) < 1:
        need = math.ceil(1 / cfg.strength)
        raise UserError(
            f"--num_inference_steps {cfg.num_inference_steps} at --strength {cfg.strength} leaves no denoising step; "
            f"use --num_inference_steps {need} or more"
        )
    if not 0 < cfg.high_noise_frac < 1:
        raise UserError(f"--high_noise_frac {cfg.high_noise_frac} is outside (0, 1); pass e.g. 0.8")
    for name in ("image", "mask_image", "prompts_file", "textual_inversion_path"):
        value = getattr(cfg, name)
        hub_ok = name == "textual_inversion_path" and _looks_like_hub_id(value)
        if value is not None and not Path(value).exists() and not hub_ok:
            raise UserError(f"--{name} {value} not found; pass an existing local file")
    for path, scale in cfg.loras:
        if not Path(path).exists() and not _looks_like_hub_id(path):
            raise UserError(f"--lora_path {path} not found; pass an existing LoRA file or folder (PATH or PATH:SCALE)")
        if not math.isfinite(scale):
            raise UserError(f"--lora_path {path}: scale {scale} is not a finite number; pass e.g. {path}:0.8")
    if cfg.eta < 0:
        raise UserError(f"--eta {cfg.eta} is negative; pass 0 (deterministic) to 1")


def to_config(args: argparse.Namespace, task: str) -> InferConfig:
    """The parsed flags as an :class:`InferConfig` for ``task``, validated (UserError on bad input)."""
    names = {f.name for f in fields(InferConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["lora_path"] = tuple(values.get("lora_path") or ())
    cfg = InferConfig(task=task, **values)
    _check(cfg)
    return cfg
