"""Load a task's diffusers pipeline and apply the flags that change it: sampler, LoRA, embeddings, attention."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch

from .. import attention, samplers
from ..errors import UserError, first_line
from ..model_paths import check_family, model_class
from ..single_file import resolve
from .args import InferConfig


@dataclass(frozen=True)
class TaskSpec:
    """How a ``test_infer/`` task loads and calls its pipeline."""

    loader: str  # diffusers class whose from_pretrained loads the model
    from_noise: bool = True  # starts from pure noise, so --init_latent_path applies
    prompts: bool = True
    model: str | None = None  # the pipeline class (or family member) --model_path must be, when only one fits


TASKS: dict[str, TaskSpec] = {
    "text-to-image": TaskSpec("DiffusionPipeline"),
    "textual-inversion": TaskSpec("DiffusionPipeline"),
    "lora": TaskSpec("DiffusionPipeline"),
    "text-guide-img-to-img": TaskSpec("AutoPipelineForImage2Image", from_noise=False),
    "text-guide-image-inpainting": TaskSpec("AutoPipelineForInpainting", from_noise=False),
    "text-guide-depth-to-image": TaskSpec(
        "DiffusionPipeline", from_noise=False, model="StableDiffusionDepth2ImgPipeline"
    ),
    "unconditional-image-generation": TaskSpec(
        "DiffusionPipeline", from_noise=False, prompts=False, model="DDPMPipeline"
    ),
    "sdxl-base": TaskSpec("DiffusionPipeline", model="StableDiffusionXLPipeline"),
    "sdxl-refiner": TaskSpec("AutoPipelineForImage2Image", from_noise=False, model="StableDiffusionXLImg2ImgPipeline"),
    # base from noise, then the refiner on its latents
    "sdxl-pipeline": TaskSpec("DiffusionPipeline", model="StableDiffusionXLPipeline"),
    # FLUX packs its latents 2x2, so --init_latent_path's (images, C, H/f, W/f) layout does not apply.
    "flux-lora": TaskSpec("DiffusionPipeline", from_noise=False, model="FluxPipeline"),
}
EXACT_MODEL = {"StableDiffusionDepth2ImgPipeline", "DDPMPipeline"}  # pipelines no other class of the family replaces


def check_model(path: str, flag: str, wanted: str | None) -> None:
    """One line when the local model folder cannot serve the task: another family (an SD folder to an SDXL
    script), or not the one pipeline a task needs (depth-to-image, unconditional generation)."""
    if wanted is None:
        return
    found = model_class(path, flag)
    if found is None:
        return
    if wanted in EXACT_MODEL and found != wanted:
        raise UserError(f"{flag} {path} is a {found} model; this task needs a {wanted} model")
    check_family(path, wanted, flag, "this task runs")


def denoiser(pipe) -> torch.nn.Module:
    """The pipeline's denoising network (UNet or transformer)."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def accepts(pipe, name: str) -> bool:
    """True if the pipeline's ``__call__`` takes keyword ``name``."""
    return name in inspect.signature(type(pipe).__call__).parameters


def _local_components(path: str) -> set[str]:
    index = Path(path) / "model_index.json"
    return set(json.loads(index.read_text())) if index.is_file() else {"safety_checker"}


def load_pipeline(
    path: str, flag: str, loader: str, cfg: InferConfig, dtype: torch.dtype, **components: Any
) -> diffusers.DiffusionPipeline:
    """``loader.from_pretrained`` on ``path`` (a folder, hub id or tiny:<kind>) in ``dtype``, on CPU.

    ``components`` replace pipeline parts (the SDXL ensemble shares the base's VAE and second text encoder).
    Raises UserError for a missing model directory.
    """
    resolved = resolve(path, flag, None, cfg.single_file_config, cfg.original_config, Path(cfg.output_dir))
    wanted = "StableDiffusionXLImg2ImgPipeline" if flag == "--refiner_path" else TASKS[cfg.task].model
    check_model(resolved, flag, wanted)
    kwargs: dict[str, Any] = dict(dtype=dtype, **components)
    if cfg.disable_safety_checker and "safety_checker" in _local_components(resolved):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if cfg.unet_path is not None and flag == "--model_path":
        config = Path(cfg.unet_path) / "config.json"
        if not config.is_file():
            raise UserError(f"--unet_path {cfg.unet_path} is not a diffusers model folder (no config.json); pass one")
        found = json.loads(config.read_text()).get("_class_name")
        if found != "UNet2DConditionModel":
            raise UserError(
                f"--unet_path {cfg.unet_path} holds a {found}, not a UNet2DConditionModel; pass a UNet folder"
            )
        kwargs["unet"] = diffusers.AutoModel.from_pretrained(cfg.unet_path, dtype=dtype)
    pipe = getattr(diffusers, loader).from_pretrained(resolved, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def apply_sampler(pipe, cfg: InferConfig) -> dict[str, Any]:
    """Swap in the ``--sampler``/``--discretization`` scheduler; return extra call kwargs (``sigmas``)."""
    if "FlowMatch" in type(pipe.scheduler).__name__ and (cfg.sampler or cfg.discretization):
        raise UserError(f"{type(pipe).__name__} samples with its flow-matching scheduler; --sampler and "
                        "--discretization are for SD/SDXL: drop them")  # fmt: skip
    pipe.scheduler, call_kwargs = samplers.build_scheduler(
        pipe.scheduler, cfg.sampler_choice(), cfg.num_inference_steps
    )
    for grid in ("sigmas", "timesteps"):
        if grid in call_kwargs and not accepts(pipe, grid):
            raise UserError(f"--discretization {cfg.discretization} needs a pipeline that takes custom {grid}, not "
                            f"{type(pipe).__name__}; drop it")  # fmt: skip
    if not TASKS[cfg.task].prompts:  # DDPMPipeline: no scale_model_input, no init_noise_sigma, passes generator=
        spec = samplers.SAMPLERS.get(cfg.sampler or "")
        takes_generator = "generator" in inspect.signature(pipe.scheduler.step).parameters
        if (spec is not None and spec.sigma_space) or not takes_generator:
            raise UserError(
                f"--sampler {cfg.sampler} does not fit {type(pipe).__name__}; use ddpm, ddim, dpm++2m, dpm++sde or lcm"
            )
    return call_kwargs


def apply_loras(pipe, loras: list[tuple[str, float]]) -> None:
    """Load each ``(path, scale)`` LoRA (diffusers or kohya format: stock ``load_lora_weights`` reads both) as its
    own adapter and activate them together at their scales (0 leaves the model's outputs unchanged)."""
    if not hasattr(pipe, "load_lora_weights"):
        raise UserError(f"--lora_path: {type(pipe).__name__} cannot load LoRA weights; use an SD, SDXL or FLUX model")
    names = [f"lora{i}" for i in range(len(loras))]
    for name, (path, _) in zip(names, loras):
        try:
            pipe.load_lora_weights(path, adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise UserError(
                f"--lora_path {path} could not be loaded into {type(pipe).__name__} ({first_line(err)}); "
                "pass a diffusers or kohya LoRA made for this model"
            ) from None
        # diffusers only warns when no key of the file fits any component (a LoRA for another model family).
        if not any(name in adapters for adapters in pipe.get_list_adapters().values()):
            raise UserError(
                f"--lora_path {path} has no weights for {type(pipe).__name__}; it is a LoRA for another model"
            )
    pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])


def apply_textual_inversion(pipe, path: str, token: str | None) -> None:
    """Load a learned embedding; an SDXL file with ``clip_l``/``clip_g`` goes into both text encoders."""
    if not hasattr(pipe, "load_textual_inversion"):
        raise UserError(
            f"--textual_inversion_path: {type(pipe).__name__} cannot load embeddings; use an SD or SDXL model"
        )
    if path.endswith(".safetensors") and getattr(pipe, "text_encoder_2", None) is not None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except (SafetensorError, OSError) as err:
            raise UserError(f"--textual_inversion_path {path} is not a readable safetensors file ({err}); "
                            "pass a learned_embeds file") from None  # fmt: skip
        if {"clip_l", "clip_g"} <= set(state):
            token = token or Path(path).stem
            pipe.load_textual_inversion(
                state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
            )
            pipe.load_textual_inversion(
                state["clip_g"], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
            )
            return
    from safetensors import SafetensorError

    try:
        pipe.load_textual_inversion(path, token=token)
    except (OSError, ValueError, SafetensorError, RuntimeError) as err:
        raise UserError(
            f"--textual_inversion_path {path} could not be loaded ({first_line(err)}); pass a learned_embeds file"
        ) from None


def apply_attention(pipe, name: str, device_kind: str, dtype: torch.dtype) -> None:
    """Route every attention layer of the denoiser and the VAE through kernel ``name`` (attention.KERNELS)."""
    for part in ("unet", "transformer", "vae"):
        model = getattr(pipe, part, None)
        if model is not None and hasattr(model, "set_attn_processor"):
            attention.set_attention(model, name, device_kind, dtype)


def prepare(pipe, cfg: InferConfig, device, dtype: torch.dtype, adapters: bool = True) -> dict[str, Any]:
    """Apply sampler, LoRA, embedding and attention flags, move to ``device``; return extra call kwargs.

    ``adapters=False`` (the SDXL refiner) skips LoRA and embeddings, which are trained for the base.
    """
    call_kwargs = apply_sampler(pipe, cfg)
    if adapters and cfg.loras:
        apply_loras(pipe, cfg.loras)
    if adapters and cfg.textual_inversion_path is not None:
        apply_textual_inversion(pipe, cfg.textual_inversion_path, cfg.token)
    if cfg.attention is not None:
        apply_attention(pipe, cfg.attention, device.kind, dtype)
    pipe.to(device.torch_device)
    if cfg.torch_compile:  # in place: the denoiser's weights and names stay as loaded
        for part in ("unet", "transformer"):
            if getattr(pipe, part, None) is not None:
                getattr(pipe, part).compile(backend=cfg.torch_compile)
    return call_kwargs
