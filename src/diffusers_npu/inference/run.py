"""Run one ``test_infer/`` task: load, plan prompts x seeds, generate with timing, save PNGs and a JSON record.

Seeds: image k of every prompt uses ``--seed + k`` through its own CPU ``torch.Generator`` (one per image, the
diffusers "reproducible batches" idiom), so an image does not depend on its batch or on the device's RNG, and
prompts compare on the same noise. Files: ``p<prompt index>_s<seed>.png`` and ``<task>.json`` in --output_dir.

Timing excludes model loading: ``s_per_img`` is a repeat's wall time over its images; ``unet_steps_per_s`` counts
denoiser calls over the time from the first call's start to the last call's end in each pipeline call (device
synchronized), so text encoding and VAE decoding are outside it. ``--benchmark N`` reports medians of N repeats.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .. import devices, paths, samplers
from ..environment import check_environment
from ..errors import UserError
from ..logs import setup_logging
from . import noise as noise_io
from .args import InferConfig, add_device_args, add_output_args, to_config
from .pipelines import TASKS, accepts, denoiser, load_pipeline, prepare


@dataclass(frozen=True)
class Batch:
    """One pipeline call: its prompts, and per image (in output order) the prompt index and seed."""

    prompts: tuple[str, ...]
    prompt_indices: tuple[int, ...]
    seeds: tuple[int, ...]
    start: int  # index of its first image among all the run's images


@dataclass
class Loaded:
    pipe: Any
    call_kwargs: dict[str, Any]
    refiner: Any = None
    refiner_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def read_prompts(cfg: InferConfig) -> list[str]:
    """The run's prompts: the lines of --prompts_file, else --prompt (one empty prompt for unconditional tasks)."""
    if not TASKS[cfg.task].prompts:
        return [""]
    if cfg.prompts_file is None:
        return [cfg.prompt]
    try:
        text = Path(cfg.prompts_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(
            f"--prompts_file {cfg.prompts_file} cannot be read as UTF-8 text ({err}); pass a text file"
        ) from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"--prompts_file {cfg.prompts_file} has no prompts; write one prompt per line")
    return lines


def plan_batches(prompts: list[str], batch_size: int, per_prompt: int, seed: int) -> list[Batch]:
    """Split prompts into calls of ``batch_size`` prompts; image k of each prompt gets ``seed + k``."""
    batches = []
    for lo in range(0, len(prompts), batch_size):
        idx = range(lo, min(lo + batch_size, len(prompts)))
        batches.append(Batch(
            prompts=tuple(prompts[i] for i in idx),
            prompt_indices=tuple(i for i in idx for _ in range(per_prompt)),
            seeds=tuple(seed + k for _ in idx for k in range(per_prompt)),
            start=lo * per_prompt,
        ))  # fmt: skip
    return batches


def _open_image(path: str, flag: str, mode: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, UnidentifiedImageError):
        raise UserError(f"{flag} {path} is not a readable image; pass a PNG or JPEG file") from None


def read_images(cfg: InferConfig) -> dict[str, Image.Image]:
    """--image / --mask_image, checked against each other and resized to --height/--width when given."""
    images: dict[str, Image.Image] = {}
    if cfg.image is not None:
        images["image"] = _open_image(cfg.image, "--image", "RGB")
    if cfg.mask_image is not None:
        mask, image = _open_image(cfg.mask_image, "--mask_image", "L"), images["image"]
        if mask.size != image.size:
            raise UserError(
                f"--mask_image is {mask.width}x{mask.height} but --image is {image.width}x{image.height}; "
                "pass a mask of the image's size"
            )
        images["mask_image"] = mask
    if images and (cfg.height or cfg.width):
        w, h = images["image"].size
        size = (cfg.width or w, cfg.height or h)
        images = {k: v.resize(size, Image.Resampling.LANCZOS) for k, v in images.items()}
    return images


def load(cfg: InferConfig, device: devices.Device, dtype: torch.dtype) -> Loaded:
    """The task's pipeline (and the SDXL refiner for ``sdxl-pipeline``), prepared and on ``device``."""
    pipe = load_pipeline(cfg.model_path, "--model_path", TASKS[cfg.task].loader, cfg, dtype)
    loaded = Loaded(pipe, prepare(pipe, cfg, device, dtype))
    if cfg.refiner_path is not None:
        shared = {k: getattr(pipe, k) for k in ("text_encoder_2", "vae")}  # as diffusers' ensemble-of-experts recipe
        refiner = load_pipeline(cfg.refiner_path, "--refiner_path", "AutoPipelineForImage2Image", cfg, dtype, **shared)
        loaded.refiner, loaded.refiner_kwargs = refiner, prepare(refiner, cfg, device, dtype, adapters=False)
    return loaded


def _pixel_size(pipe, cfg: InferConfig) -> tuple[int | None, int | None]:
    """--height/--width, else the UNet's native size (None for models without one: the pipeline decides)."""
    sample_size = getattr(denoiser(pipe).config, "sample_size", None)
    default = None if sample_size is None else sample_size * pipe.vae_scale_factor
    return cfg.height or default, cfg.width or default


class DenoiseTimer:
    """Counts denoiser forward calls and times each pipeline call's span from first call start to last call end."""

    def __init__(self, models: list[torch.nn.Module], device: devices.Device):
        self.device, self.calls, self.denoise_s = device, 0, 0.0
        self._first: float | None = None
        self._last = 0.0
        self._handles = [
            h for m in models for h in (m.register_forward_pre_hook(self._pre), m.register_forward_hook(self._post))
        ]

    def _pre(self, *_):
        self.device.synchronize()
        if self._first is None:
            self._first = time.perf_counter()

    def _post(self, *_):
        self.device.synchronize()
        self._last, self.calls = time.perf_counter(), self.calls + 1

    def end_call(self) -> None:
        if self._first is not None:
            self.denoise_s += self._last - self._first
            self._first = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass
class Fixed:
    """The .npy inputs of a run (None when absent)."""

    latents: np.ndarray | None = None
    noise: np.ndarray | None = None


def _call_kwargs(pipe, cfg: InferConfig, batch: Batch, images: dict, extra: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of one pipeline call, reduced to what this pipeline's ``__call__`` takes."""
    generators = [torch.Generator("cpu").manual_seed(s) for s in batch.seeds]
    if not TASKS[cfg.task].prompts:
        return dict(batch_size=len(batch.seeds), generator=generators, num_inference_steps=cfg.num_inference_steps)
    negative = None if cfg.negative_prompt is None else [cfg.negative_prompt] * len(batch.prompts)
    kwargs = dict(prompt=list(batch.prompts), negative_prompt=negative, num_inference_steps=cfg.num_inference_steps,
                  guidance_scale=cfg.guidance_scale, num_images_per_prompt=cfg.num_images_per_prompt,
                  generator=generators, eta=cfg.eta, **extra)  # fmt: skip
    if images:
        kwargs.update(images, strength=cfg.strength)
        kwargs.update(height=images["image"].height, width=images["image"].width)
    else:
        kwargs["height"], kwargs["width"] = _pixel_size(pipe, cfg)
    for name in ("sigmas", "latents"):
        if name in kwargs and not accepts(pipe, name):
            raise UserError(f"{type(pipe).__name__} takes no {name}; drop --discretization edm / --init_latent_path")
    return {k: v for k, v in kwargs.items() if accepts(pipe, k)}


def _one_call(loaded: Loaded, cfg: InferConfig, batch: Batch, images: dict, fixed: Fixed):
    """Run one pipeline call; return (PIL images, initial latents used or None, per-step noise used or None)."""
    pipe = loaded.pipe
    kwargs = _call_kwargs(pipe, cfg, batch, images, loaded.call_kwargs)
    n, lo = len(batch.seeds), batch.start
    latents = None
    if TASKS[cfg.task].from_noise and (fixed.latents is not None or cfg.dump_latents):
        h, w = kwargs["height"], kwargs["width"]
        shape = (n, denoiser(pipe).config.in_channels, h // pipe.vae_scale_factor, w // pipe.vae_scale_factor)
        part = None if fixed.latents is None else fixed.latents[lo : lo + n]
        latents = noise_io.initial_latents(
            shape, kwargs["generator"], pipe._execution_device, denoiser(pipe).dtype, part
        )
        kwargs["latents"] = latents
    step_noise = None
    feed = cfg.init_noise_path is not None or cfg.dump_latents
    if feed and hasattr(pipe.scheduler, "step_noise"):  # a sampler fed per-step noise (samplers.with_step_noise)
        step_noise = noise_io.StepNoise(
            None if fixed.noise is None else fixed.noise[:, lo : lo + n], cfg.init_noise_path
        )
        for p in (pipe, loaded.refiner):
            if p is not None:
                p.scheduler.step_noise = step_noise
    if loaded.refiner is None:
        out = pipe(**kwargs).images
    else:
        base_latents = pipe(**kwargs, denoising_end=cfg.high_noise_frac, output_type="latent").images
        ref_kwargs = {k: v for k, v in kwargs.items() if k not in ("latents", "height", "width")}
        ref_kwargs.update(loaded.refiner_kwargs, image=base_latents, denoising_start=cfg.high_noise_frac)
        out = loaded.refiner(**ref_kwargs).images
    return out, None if latents is None else latents.cpu(), None if step_noise is None else step_noise.stacked()


def _attach_step_noise(loaded: Loaded, cfg: InferConfig) -> None:
    """Give the scheduler(s) a per-step noise source for --init_noise_path (required) or --dump_latents (if any)."""
    if cfg.init_noise_path is None and not cfg.dump_latents:
        return
    for p in (loaded.pipe, loaded.refiner):
        if p is None:
            continue
        refusal = samplers.step_noise_refusal(p.scheduler, cfg.eta if accepts(p, "eta") else 0.0)
        if refusal is not None and cfg.init_noise_path is not None:
            raise UserError(f"--init_noise_path: {refusal}")
        if refusal is None:
            p.scheduler = samplers.with_step_noise(p.scheduler, None)


def _latent_shape(pipe, cfg: InferConfig, images: dict, n_images: int, channels: str) -> tuple[int, ...] | None:
    """(images, denoiser ``channels``, h, w) of this run's latents; None for pixel-space pipelines."""
    if not hasattr(pipe, "vae_scale_factor"):
        return None
    h, w = (images["image"].height, images["image"].width) if images else _pixel_size(pipe, cfg)
    f = pipe.vae_scale_factor
    return (n_images, getattr(denoiser(pipe).config, channels), h // f, w // f)


def _read_fixed(cfg: InferConfig, loaded: Loaded, images: dict, n_images: int) -> Fixed:
    """Load --init_latent_path / --init_noise_path and check their shapes against this run."""
    fixed = Fixed()
    if cfg.init_latent_path is not None:
        if not TASKS[cfg.task].from_noise:
            raise UserError(
                f"--init_latent_path sets the starting noise of text-to-image runs, which {cfg.task} is not; "
                "drop it or use text-to-image, lora, textual-inversion, sdxl-base or sdxl-pipeline"
            )
        fixed.latents = noise_io.load_npy(cfg.init_latent_path, "--init_latent_path", "(images, C, H/f, W/f)")
        expected = _latent_shape(loaded.pipe, cfg, images, n_images, "in_channels")
        noise_io.check_latents_shape(fixed.latents, expected, loaded.pipe.vae_scale_factor, cfg.init_latent_path)
    if cfg.init_noise_path is not None:
        fixed.noise = noise_io.load_npy(cfg.init_noise_path, "--init_noise_path", "(draws, images, C, H/f, W/f)")
        per_draw = _latent_shape(loaded.pipe, cfg, images, n_images, "out_channels")
        got = tuple(fixed.noise.shape[1:])
        if got != (per_draw or got) or fixed.noise.shape[1] != n_images:
            expected = f"(draws, {', '.join(map(str, per_draw or (n_images, 'C', 'h', 'w')))})"
            raise UserError(
                f"--init_noise_path {cfg.init_noise_path} has shape {tuple(fixed.noise.shape)} but this run needs "
                f"{expected}; write one with --dump_latents and the same flags"
            )
    return fixed


def _repeat(loaded: Loaded, cfg: InferConfig, batches: list[Batch], images: dict, fixed: Fixed, device):
    """One pass over all batches; returns (images, timing dict, latents per call, noise per call)."""
    models = [denoiser(p) for p in (loaded.pipe, loaded.refiner) if p is not None]
    timer, pictures, latents, noises = DenoiseTimer(models, device), [], [], []
    device.reset_peak_memory()
    device.synchronize()
    start = time.perf_counter()
    try:
        for batch in batches:
            out, lat, noise = _one_call(loaded, cfg, batch, images, fixed)
            timer.end_call()
            pictures.extend(out)
            latents += [] if lat is None else [lat]
            noises.append(noise)
    finally:
        timer.remove()
    device.synchronize()
    total_s = time.perf_counter() - start
    timing = dict(total_s=total_s, s_per_img=total_s / len(pictures), denoise_s=timer.denoise_s,
                  unet_steps=timer.calls, unet_steps_per_s=timer.calls / timer.denoise_s if timer.denoise_s else 0.0,
                  peak_mem_gib=device.peak_memory_gib())  # fmt: skip
    return pictures, timing, latents, noises


def _scheduler_record(pipe) -> dict[str, Any]:
    sigma = getattr(pipe.scheduler, "init_noise_sigma", 1.0)  # flow-matching schedulers have none
    return dict(
        pipeline=type(pipe).__name__,
        scheduler=type(pipe.scheduler).__name__,
        scheduler_config=dict(pipe.scheduler.config),
        init_noise_sigma=float(sigma),
    )


def run(cfg: InferConfig) -> dict[str, Any]:
    """Run ``cfg``; write the PNGs, ``<task>.json`` and (with --dump_latents) the .npy files; return the record."""
    check_environment()
    setup_logging()
    paths.output_dir(cfg.output_dir)  # before loading or generating anything
    device = devices.get_device(cfg.device)
    dtype = device.check_dtype(devices.parse_dtype(cfg.dtype))
    prompts, images = read_prompts(cfg), read_images(cfg)
    batches = plan_batches(prompts, cfg.batch_size, cfg.num_images_per_prompt, cfg.seed)
    load_start = time.perf_counter()
    loaded = load(cfg, device, dtype)
    load_s = time.perf_counter() - load_start
    _attach_step_noise(loaded, cfg)
    fixed = _read_fixed(cfg, loaded, images, len(prompts) * cfg.num_images_per_prompt)
    repeats = [_repeat(loaded, cfg, batches, images, fixed, device) for _ in range(cfg.benchmark)]
    pictures, _, latents, noises = repeats[-1]
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i, picture in enumerate(pictures):
        batch = next(b for b in batches if b.start <= i < b.start + len(b.seeds))
        prompt_index, seed = batch.prompt_indices[i - batch.start], batch.seeds[i - batch.start]
        name = f"p{prompt_index:04d}_s{seed}.png"
        picture.save(out_dir / name)
        records.append(dict(file=name, prompt_index=prompt_index, prompt=prompts[prompt_index], seed=seed))
    timings = [t for _, t, _, _ in repeats]
    record = dict(
        task=cfg.task,
        params=dataclasses.asdict(cfg),
        device=device.kind,
        dtype=str(dtype),
        versions=dict(torch=torch.__version__, diffusers=diffusers.__version__),
        resolved=_scheduler_record(loaded.pipe) | dict(call_kwargs=loaded.call_kwargs),
        images=records,
        dumps=noise_io.save_dumps(out_dir, latents, noises) if cfg.dump_latents else [],
        peak_mem_gib=max(t["peak_mem_gib"] for t in timings),
        timing=dict(
            load_s=load_s, repeats=timings, median={k: statistics.median(t[k] for t in timings) for k in timings[0]}
        ),
    )
    (out_dir / f"{cfg.task}.json").write_text(json.dumps(record, indent=2, default=str))
    return record


def summary(record: dict[str, Any]) -> str:
    """One parseable line for a finished run (the launchers' ``key=value`` style)."""
    median = record["timing"]["median"]
    return (
        f"task={record['task']} images={len(record['images'])} s_per_img={median['s_per_img']:.4f} "
        f"unet_steps_per_s={median['unet_steps_per_s']:.2f} peak_mem_gib={median['peak_mem_gib']:.3f} "
        f"out={record['params']['output_dir']}"
    )


def main(parser, argv: list[str] | None, task: str) -> int:
    """The shared tail of every test_infer/ script: add the device and output flags, parse, run, print the summary."""
    add_device_args(parser)
    add_output_args(parser)
    print(summary(run(to_config(parser.parse_args(argv), task))))
    return 0
