"""Initial latents and per-step noise: read from ``.npy`` for cross-framework parity, or drawn as diffusers draws
them, and written back with ``--dump_latents`` (MindONE's ``--init_latent_path`` / ``--init_noise_scheduler_path``
in mindspore-lab/mindone examples/stable_diffusion_xl).

File layouts, for a run of N images (prompts x images per prompt, in output order):

- initial latents: ``(N, C, H/f, W/f)``, *before* the scheduler's ``init_noise_sigma`` scaling (the pipeline
  applies it), as MindONE saves diffusers' latents before ``latents * init_noise_sigma``;
- per-step noise: ``(D, N, C, H/f, W/f)``, one slice per noise draw, in the order the sampler draws them
  (euler_a, ddim and dpm++sde draw once per step, dpm++2s-a once per step but the last).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from ..errors import UserError

LATENTS_FILE = "init_latents.npy"
NOISE_FILE = "step_noise.npy"


def load_npy(path: str, flag: str, layout: str) -> np.ndarray:
    """A float array from ``path`` laid out as ``layout`` (e.g. ``"(images, C, H/f, W/f)"``), else a UserError."""
    if not Path(path).is_file():
        raise UserError(f"{flag} {path} not found; pass an existing .npy file (e.g. one written by --dump_latents)")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{flag} {path} is not a plain .npy array ({err}); save it with numpy.save") from None
    if array.ndim != layout.count(",") + 1 or not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        raise UserError(
            f"{flag} {path} has shape {tuple(array.shape)} ({array.dtype}); expected a float array {layout}"
        )
    if not np.isfinite(array).all():
        raise UserError(f"{flag} {path} holds NaN or inf values; write finite latents or noise")
    return array


def check_latents_shape(array: np.ndarray, expected: tuple[int, ...], scale: int, path: str) -> None:
    """Raise a one-line UserError unless the initial latents have the shape this run needs."""
    if tuple(array.shape) != tuple(expected):
        raise UserError(
            f"--init_latent_path {path} has shape {tuple(array.shape)} but this run needs {tuple(expected)} "
            f"(images, latent channels, height/{scale}, width/{scale}); match --height/--width/--num_images_per_prompt"
        )


def initial_latents(
    shape: tuple[int, ...], generator, device: torch.device, dtype: torch.dtype, fixed: np.ndarray | None
) -> torch.Tensor:
    """The unscaled initial latents: ``fixed`` if given, else drawn exactly as diffusers' ``prepare_latents``."""
    if fixed is not None:
        return torch.from_numpy(np.ascontiguousarray(fixed)).to(device=device, dtype=dtype)
    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


class StepNoise:
    """The per-step noise of one pipeline call: read from ``fixed`` ``(D, B, ...)`` or drawn as diffusers does.

    Every tensor handed out is kept in ``used`` (on CPU) for ``--dump_latents``.
    """

    def __init__(self, fixed: np.ndarray | None = None, path: str | None = None):
        self.fixed, self.path = fixed, path
        self.used: list[torch.Tensor] = []

    def draw(self, shape, generator, device, dtype) -> torch.Tensor:
        i = len(self.used)
        if self.fixed is None:
            noise = randn_tensor(tuple(shape), generator=generator, device=device, dtype=dtype)
        else:
            if i >= len(self.fixed):
                raise UserError(
                    f"--init_noise_path {self.path} holds {len(self.fixed)} noise draws but the sampler needs more "
                    f"(draw {i + 1}); pass one per step, e.g. written by --dump_latents with the same flags"
                )
            if tuple(self.fixed.shape[1:]) != tuple(shape):
                raise UserError(
                    f"--init_noise_path {self.path} has per-step shape {tuple(self.fixed.shape[1:])} but this run "
                    f"draws {tuple(shape)}; pass an array of shape (draws, {', '.join(map(str, shape))})"
                )
            noise = torch.from_numpy(np.ascontiguousarray(self.fixed[i])).to(device=device, dtype=dtype)
        self.used.append(noise.detach().cpu())
        return noise

    def stacked(self) -> torch.Tensor | None:
        """The noise used, ``(D, B, ...)``, or None if none was drawn."""
        return torch.stack(self.used) if self.used else None


def save_dumps(out_dir: Path, latents: list[torch.Tensor], noises: list[torch.Tensor | None]) -> list[str]:
    """Write the run's initial latents ``(N, ...)`` and per-step noise ``(D, N, ...)`` as float32 .npy files.

    ``latents``/``noises`` hold one entry per pipeline call, in output order. Returns the file names written.
    """
    written = []
    if latents:
        np.save(out_dir / LATENTS_FILE, torch.cat(latents).float().numpy())
        written.append(LATENTS_FILE)
    if noises and all(n is not None for n in noises):
        np.save(out_dir / NOISE_FILE, torch.cat(noises, dim=1).float().numpy())
        written.append(NOISE_FILE)
    return written
