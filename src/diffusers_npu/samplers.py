"""Sampler names -> diffusers schedulers (one table), discretizations, and per-step noise for parity runs.

``--sampler NAME`` picks a :class:`SamplerSpec`: a diffusers scheduler class plus config overrides, applied as
``Cls.from_config(pipe.scheduler.config, **overrides)``. Nothing here re-implements a sampler,
with two exceptions needed for cross-framework parity, both after k-diffusion
(k_diffusion/sampling.py): ``dpm++2s-a`` (diffusers has no DPM++(2S) ancestral) and the Euler-ancestral step
that takes its noise from a file (diffusers' draws it internally). Both are pure functions below.

``--discretization`` sets the timestep grid the way MindONE's SDXL sampler names it (mindspore-lab/mindone
examples/stable_diffusion_xl, gm/modules/diffusionmodules/discretizer.py):

- ``legacy``: MindONE's default ``LegacyDDPMDiscretization``, exactly: integer timesteps
  ``np.linspace(999, 0, n, endpoint=False).astype(int)[::-1]`` (``generate_roughly_equally_spaced_steps``), the
  training sigmas at them, no interpolation, a final 0 (:func:`legacy_timesteps`). They are handed to the
  scheduler as custom ``timesteps`` (or ``sigmas``), so every step count follows MindONE's grid; a sampler that
  takes neither is refused. diffusers' "trailing" spacing agrees only when 1000 / n works out.
- ``diffusers``: MindONE's ``DiffusersDDPMDiscretization`` = ``timestep_spacing="leading"`` + ``steps_offset=1``.
- ``edm``: Karras et al. (2022) eq. 5 sigmas from ``--sigma_min``/``--sigma_max``/``--rho`` (defaults: the
  model's trained sigma range and rho 7, so the defaults equal diffusers' ``use_karras_sigmas=True``).

Initial-noise scaling: the pipeline multiplies the initial latents by the scheduler's ``init_noise_sigma``:
1 for DDPM/DDIM/DPM-Solver/UniPC/LCM (they work in the variance-preserving space, the same latents up to that
change of variables); for the sigma-space (k-diffusion style) schedulers ``sqrt(1 + sigma_max^2)`` with
"leading" spacing but ``sigma_max`` with "trailing" or "linspace". ``legacy`` sets "leading" for them, so the
scale is MindONE's ``prepare_sampling_loop`` ``x *= sqrt(1 + sigmas[0] ** 2)``. ``--init_latent_path`` is the
latents before this scaling; runs record the value used (``init_noise_sigma`` in the run JSON).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import diffusers
import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from .errors import UserError


@dataclass(frozen=True)
class SamplerSpec:
    """A CLI sampler name: the diffusers scheduler class (by name) and the config it overrides."""

    scheduler: str
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    doc: str = ""
    # k-diffusion-style schedulers work in sigma space: they need ``scale_model_input`` and scale the initial
    # noise by ``init_noise_sigma`` > 1, which pipelines without those calls (DDPMPipeline) do not make.
    sigma_space: bool = False


def _spec(scheduler: str, doc: str, sigma_space: bool = False, **overrides: Any) -> SamplerSpec:
    return SamplerSpec(scheduler, MappingProxyType(overrides), doc, sigma_space)


_DPM = dict(solver_order=2, use_karras_sigmas=False)
SAMPLERS: dict[str, SamplerSpec] = {
    "euler": _spec("EulerDiscreteScheduler", "Euler (Karras et al. 2022, Alg. 2 without churn)", True),
    "euler_a": _spec("EulerAncestralDiscreteScheduler", "Euler ancestral, eta 1", True),
    "heun": _spec("HeunDiscreteScheduler", "Heun, 2nd order (Karras et al. 2022, Alg. 1)", True),
    "dpm++2m": _spec("DPMSolverMultistepScheduler", "DPM-Solver++(2M)", algorithm_type="dpmsolver++", **_DPM),
    "dpm++2m-karras": _spec(
        "DPMSolverMultistepScheduler", "DPM-Solver++(2M), Karras sigmas",
        algorithm_type="dpmsolver++", **{**_DPM, "use_karras_sigmas": True},
    ),
    "dpm++2s-a": _spec("DPMPP2SAncestralScheduler", "DPM-Solver++(2S) ancestral (k-diffusion parity sampler)", True),
    # DPMSolverSDEScheduler needs torchsde; DPM-Solver++(2M) SDE is the same family and takes variance_noise.
    "dpm++sde": _spec("DPMSolverMultistepScheduler", "DPM-Solver++(2M) SDE", algorithm_type="sde-dpmsolver++", **_DPM),
    "dpm++sde-karras": _spec(
        "DPMSolverMultistepScheduler", "DPM-Solver++(2M) SDE, Karras sigmas",
        algorithm_type="sde-dpmsolver++", **{**_DPM, "use_karras_sigmas": True},
    ),
    "lms": _spec("LMSDiscreteScheduler", "linear multistep, order 4", True),
    "ddim": _spec("DDIMScheduler", "DDIM (--eta > 0 adds noise)"),
    "ddpm": _spec("DDPMScheduler", "DDPM ancestral sampling"),
    "pndm": _spec("PNDMScheduler", "PLMS (PNDM without Runge-Kutta warm-up)", skip_prk_steps=True),
    "unipc": _spec("UniPCMultistepScheduler", "UniPC multistep"),
    "lcm": _spec("LCMScheduler", "latent consistency (4 steps with an LCM LoRA or LCM UNet)"),
}  # fmt: skip

# MindONE SDXL's seven sampler classes (gm/modules/diffusionmodules/sampler.py) -> our names. Each takes its grid
# from --discretization (MindONE's default: legacy). MINDONE_SETTINGS says how each is built there
# (gm/helpers.py get_sampler) and what ours does with it.
MINDONE_ALIASES: dict[str, str] = {
    "EulerEDMSampler": "euler",
    "HeunEDMSampler": "heun",
    "EulerAncestralSampler": "euler_a",
    "DPMPP2SAncestralSampler": "dpm++2s-a",
    "DPMPP2MSampler": "dpm++2m",
    "LinearMultistepSampler": "lms",
    "LCMSampler": "lcm",
}

MINDONE_SETTINGS: dict[str, str] = {
    "EulerEDMSampler": "s_churn 0 (get_sampler's default): no churn, as diffusers' Euler (s_churn 0)",
    "HeunEDMSampler": "s_churn 0; Heun's correction skipped at sigma 0, as diffusers' Heun",
    "EulerAncestralSampler": "built with eta=0.001, but its sampler_step calls get_ancestral_step(sigma, "
    "next_sigma) without it, so eta is sampling_utils' default 1.0: diffusers' Euler ancestral (eta 1)",
    "DPMPP2SAncestralSampler": "eta 1 (AncestralSampler's default), s_noise 1: our k-diffusion dpm++2s-a",
    "DPMPP2MSampler": "order 2, DPM-Solver++ midpoint form, first order at the last step: diffusers' dpmsolver++ "
    "with solver_order 2 (midpoint) and a first-order final step to sigma 0, in the VP parametrization",
    "LinearMultistepSampler": "order 4: diffusers' LMS (order 4)",
    "LCMSampler": "denoise, then add next_sigma-scaled noise: diffusers' LCMScheduler with the model's config",
}

DISCRETIZATIONS: dict[str, Mapping[str, Any]] = {
    # "leading" only sets init_noise_sigma = sqrt(1 + sigma_max^2); the grid itself is legacy_timesteps().
    "legacy": MappingProxyType({"timestep_spacing": "leading"}),
    "diffusers": MappingProxyType({"timestep_spacing": "leading", "steps_offset": 1}),
    "edm": MappingProxyType({}),  # sigmas come from edm_sigmas()
}


def canonical_name(name: str) -> str:
    """A sampler name or MindONE alias -> the registry name (unknown names pass through for argparse)."""
    return MINDONE_ALIASES.get(name, name)


def help_text() -> str:
    """The ``--sampler`` help: every name with its scheduler, and the MindONE aliases."""
    names = "; ".join(f"{k} = {v.scheduler}" for k, v in SAMPLERS.items())
    aliases = ", ".join(f"{k}={v}" for k, v in MINDONE_ALIASES.items())
    return f"default: the model's own scheduler. {names}. MindONE names accepted: {aliases}"


# ---- k-diffusion-style pure functions (device and dtype come from the inputs) ----------------------------------


def denoised_from(model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor, prediction_type: str):
    """The model's x0 estimate in sigma space (k-diffusion's denoiser wrappers, as diffusers' Euler schedulers)."""
    if prediction_type == "epsilon":
        return sample - sigma * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
    raise UserError(f"prediction_type {prediction_type!r} is not supported by this sampler; use euler or ddim")


def ancestral_sigmas(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up) for an ancestral step with eta 1: k-diffusion ``get_ancestral_step``."""
    sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    return (sigma_next**2 - sigma_up**2) ** 0.5, sigma_up


def euler_ancestral_step(sample, denoised, sigma, sigma_next, noise):
    """One Euler ancestral step, k-diffusion ``sample_euler_ancestral`` (Song et al. 2021 ancestral sampling).

    ``x + d * (sigma_down - sigma) + noise * sigma_up`` with ``d = (x - denoised) / sigma``, in the operation
    order of diffusers' EulerAncestralDiscreteScheduler so that identical noise gives identical results.
    """
    sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next)
    derivative = (sample - denoised) / sigma
    return sample + derivative * (sigma_down - sigma) + noise * sigma_up


def dpmpp_2s_update(sample, denoised, sigma, sigma_to):
    """DPM-Solver++ first-order data-prediction update from ``sigma`` to ``sigma_to`` (Lu et al. 2022, eq. 9).

    k-diffusion ``sample_dpmpp_2s_ancestral`` with t = -log(sigma): ``(sigma_to/sigma) x - expm1(-h) denoised``.
    """
    return (sigma_to / sigma) * sample - torch.expm1(sigma_to.log() - sigma.log()) * denoised


class NoiseSource(Protocol):
    """Where a scheduler's per-step noise comes from (``inference.noise.StepNoise``)."""

    def draw(self, shape, generator, device, dtype) -> torch.Tensor: ...


def _draw(scheduler, shape, generator, device, dtype) -> torch.Tensor:
    source = getattr(scheduler, "step_noise", None)
    if source is None:
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    return source.draw(shape, generator, device, dtype)


class DPMPP2SAncestralScheduler(diffusers.KDPM2AncestralDiscreteScheduler):
    """DPM-Solver++(2S) ancestral (k-diffusion ``sample_dpmpp_2s_ancestral``), the parity sampler for MindONE's
    ``DPMPP2SAncestralSampler``.

    KDPM2-ancestral already evaluates the model at sigma and at the log-midpoint ``sqrt(sigma * sigma_down)``,
    which is DPM-Solver++(2S)'s intermediate point (r = 1/2); only the two updates differ, so only ``step`` is
    replaced. The last step (to sigma 0) is a plain Euler step, as in k-diffusion.
    """

    step_noise: NoiseSource | None = None

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        if self.step_index is None:
            self._init_step_index(timestep)
        first = self.state_in_first_order
        i = self.step_index if first else self.step_index - 1
        sigma, sigma_mid = self.sigmas[i], self.sigmas_interpol[i]
        sigma_up, sigma_down = self.sigmas_up[i], self.sigmas_down[i]
        denoised = denoised_from(model_output, sample, sigma if first else sigma_mid, self.config.prediction_type)
        if first and sigma_mid == 0:  # last step: Euler to sigma 0
            prev_sample = sample + (sample - denoised) / sigma * (sigma_mid - sigma)
        elif first:
            self.sample = sample
            prev_sample = dpmpp_2s_update(sample, denoised, sigma, sigma_mid)
        else:
            prev_sample = dpmpp_2s_update(self.sample, denoised, sigma, sigma_down)
            self.sample = None
            noise = _draw(self, model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + noise * sigma_up
        self._step_index += 1
        if not return_dict:
            return (prev_sample, denoised)
        return diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete.KDPM2AncestralDiscreteSchedulerOutput(
            prev_sample=prev_sample, pred_original_sample=denoised
        )


# ---- schedulers that take their per-step noise from a NoiseSource ---------------------------------------------


class DDIMWithStepNoise(diffusers.DDIMScheduler):
    """DDIM whose ``variance_noise`` (used when eta > 0) comes from ``step_noise``."""

    step_noise: NoiseSource | None = None

    def step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=False, generator=None,
             variance_noise=None, return_dict=True):  # fmt: skip
        if variance_noise is None and eta > 0:
            variance_noise = _draw(self, model_output.shape, generator, model_output.device, model_output.dtype)
            generator = None  # DDIM refuses both; the generator was used for the draw
        return super().step(model_output, timestep, sample, eta, use_clipped_model_output, generator,
                            variance_noise, return_dict)  # fmt: skip


class DPMSolverMultistepWithStepNoise(diffusers.DPMSolverMultistepScheduler):
    """DPM-Solver multistep whose SDE noise comes from ``step_noise`` (diffusers draws it in float32)."""

    step_noise: NoiseSource | None = None

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None, return_dict=True):
        if variance_noise is None and self.config.algorithm_type in ("sde-dpmsolver", "sde-dpmsolver++"):
            variance_noise = _draw(self, model_output.shape, generator, model_output.device, torch.float32)
        return super().step(model_output, timestep, sample, generator, variance_noise, return_dict)


class EulerAncestralWithStepNoise(diffusers.EulerAncestralDiscreteScheduler):
    """Euler ancestral with its noise from ``step_noise``: diffusers' step, with the update as a pure function."""

    step_noise: NoiseSource | None = None

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps: list[int] | None = None):
        """diffusers' grid, or custom integer ``timesteps`` (highest first) with the training sigmas at them
        (MindONE's legacy grid); the rest as diffusers' ``set_timesteps`` leaves it."""
        if timesteps is None:
            return super().set_timesteps(num_inference_steps, device)
        self.num_inference_steps = len(timesteps)
        table = np.array(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5)
        sigmas = np.concatenate([table[np.asarray(timesteps, dtype=int)], [0.0]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.tensor(timesteps, dtype=torch.float32, device=device)
        self._step_index = None
        self._begin_index = None

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        sample = sample.to(torch.float32)  # diffusers upcasts the same way
        denoised = denoised_from(model_output, sample, sigma, self.config.prediction_type)
        noise = _draw(self, model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = euler_ancestral_step(sample, denoised, sigma, sigma_next, noise).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample, denoised)
        return diffusers.schedulers.scheduling_euler_ancestral_discrete.EulerAncestralDiscreteSchedulerOutput(
            prev_sample=prev_sample, pred_original_sample=denoised
        )


_LOCAL_CLASSES = {"DPMPP2SAncestralScheduler": DPMPP2SAncestralScheduler}
# Scheduler class name -> its variant that takes per-step noise (DDIM, the DPM++ SDE
# variants, euler_a; and dpm++2s-a, which is ours). Every other sampler refuses --init_noise_path.
_WITH_STEP_NOISE = {
    "DDIMScheduler": DDIMWithStepNoise,
    "DPMSolverMultistepScheduler": DPMSolverMultistepWithStepNoise,
    "EulerAncestralDiscreteScheduler": EulerAncestralWithStepNoise,
    "DPMPP2SAncestralScheduler": DPMPP2SAncestralScheduler,
}
NOISE_SAMPLERS = ("ddim (with --eta > 0)", "dpm++sde", "dpm++sde-karras", "euler_a", "dpm++2s-a")


def scheduler_class(name: str) -> type:
    """The scheduler class called ``name``: one of ours, else diffusers'."""
    return _LOCAL_CLASSES.get(name) or getattr(diffusers, name)


def _base_name(scheduler) -> str:
    """The diffusers (or our parity) class a scheduler instance stands for, looking through our noise variants."""
    for name, cls in _WITH_STEP_NOISE.items():
        if type(scheduler) is cls:
            return name
    return type(scheduler).__name__


def step_noise_refusal(scheduler, eta: float) -> str | None:
    """None if ``scheduler`` draws per-step noise we can feed, else why not (for a one-line error)."""
    name = _base_name(scheduler)
    if name not in _WITH_STEP_NOISE:
        return f"{name} takes no per-step noise from a file; samplers that do: {', '.join(NOISE_SAMPLERS)}"
    if name == "DDIMScheduler" and eta <= 0:
        return "ddim with --eta 0 is deterministic and draws no noise; pass --eta 1 (or drop --init_noise_path)"
    if name == "DPMSolverMultistepScheduler" and not scheduler.config.algorithm_type.startswith("sde-"):
        return f"{scheduler.config.algorithm_type} DPM-Solver is deterministic; use --sampler dpm++sde"
    return None


def with_step_noise(scheduler, source: NoiseSource):
    """A copy of ``scheduler`` (same config) that takes its per-step noise from ``source``."""
    cls = _WITH_STEP_NOISE[_base_name(scheduler)]
    fed = cls.from_config(scheduler.config)
    fed.step_noise = source
    return fed


# ---- building a scheduler from CLI choices ----------------------------------------------------------------------


def trained_sigma_range(scheduler) -> tuple[float, float]:
    """(sigma_min, sigma_max) of the model's training schedule: sigma_t = sqrt((1 - abar_t) / abar_t)."""
    abar = scheduler.alphas_cumprod.double().numpy()
    sigmas = ((1 - abar) / abar) ** 0.5
    return float(sigmas[0]), float(sigmas[-1])


def legacy_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """MindONE's ``LegacyDDPMDiscretization`` timesteps, highest first: ``generate_roughly_equally_spaced_steps``
    (mindone examples/stable_diffusion_xl/gm/modules/diffusionmodules/discretizer.py), all of them for n = 1000."""
    if not 1 <= steps <= num_train_timesteps:
        raise UserError(
            f"--num_inference_steps {steps} must be in [1, {num_train_timesteps}] for --discretization legacy"
        )
    if steps == num_train_timesteps:
        return list(range(num_train_timesteps - 1, -1, -1))
    ascending = np.linspace(num_train_timesteps - 1, 0, steps, endpoint=False).astype(int)[::-1]
    return [int(t) for t in ascending[::-1]]


def legacy_sigmas(scheduler, steps: int) -> list[float]:
    """The training sigmas at :func:`legacy_timesteps`, highest first, and a final 0 (MindONE's ``append_zero``)."""
    abar = scheduler.alphas_cumprod.double().numpy()
    table = ((1 - abar) / abar) ** 0.5
    return [*table[legacy_timesteps(steps, len(abar))].tolist(), 0.0]


def _legacy(cls: type, base, label: str, steps: int) -> dict[str, Any]:
    """Pipeline call kwargs that put ``cls`` on MindONE's legacy grid: custom timesteps, else custom sigmas."""
    grids = _custom_grids(cls)
    if "timesteps" in grids:
        return {"timesteps": legacy_timesteps(steps, base.config.num_train_timesteps)}
    if "sigmas" in grids:
        return {"sigmas": legacy_sigmas(base, steps)}
    takes = [n for n, spec in SAMPLERS.items() if _custom_grids(scheduler_class(spec.scheduler))] + ["euler_a"]
    raise UserError(f"--discretization legacy: {label} takes no custom timesteps or sigmas, so it cannot follow "
                    f"MindONE's grid exactly; use one of {', '.join(takes)}")  # fmt: skip


def _custom_grids(cls: type) -> set[str]:
    """Which custom grids ``cls.set_timesteps`` takes: ``timesteps``, ``sigmas`` (UniPC's are flow-matching only)."""
    grids = {"timesteps", "sigmas"} & set(inspect.signature(cls.set_timesteps).parameters)
    return grids - {"sigmas"} if "use_flow_sigmas" in _init_params(cls) else grids


def edm_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> list[float]:
    """Karras et al. (2022) eq. 5: ``(max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho``, then a final 0.

    The same arithmetic as diffusers' ``_convert_to_karras`` (which fixes rho at 7).
    """
    ramp = np.linspace(0, 1, steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return [*sigmas.tolist(), 0.0]


@dataclass(frozen=True)
class SamplerChoice:
    """The sampling flags: ``name`` None keeps the model's scheduler; ``discretization`` None keeps its grid."""

    name: str | None = None
    discretization: str | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None


def _init_params(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def _edm(cls: type, base, choice: SamplerChoice, steps: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config overrides, pipeline call kwargs) for ``--discretization edm`` on scheduler class ``cls``."""
    label = choice.name or cls.__name__
    if "sigmas" in inspect.signature(cls.set_timesteps).parameters:
        lo, hi = trained_sigma_range(base)
        sigma_min = lo if choice.sigma_min is None else choice.sigma_min
        sigma_max = hi if choice.sigma_max is None else choice.sigma_max
        rho = 7.0 if choice.rho is None else choice.rho
        if not 0 < sigma_min < sigma_max:
            raise UserError(f"--sigma_min {sigma_min} must be > 0 and below --sigma_max {sigma_max}; fix the range")
        return {}, {"sigmas": edm_sigmas(steps, sigma_min, sigma_max, rho)}
    if "use_karras_sigmas" not in _init_params(cls):
        raise UserError(f"--discretization edm is not available for sampler {label}; use euler, heun, lms or dpm++2m")
    if (choice.sigma_min, choice.sigma_max, choice.rho) != (None, None, None):
        raise UserError(
            f"--sigma_min/--sigma_max/--rho need a sampler that takes custom sigmas (euler, unipc); {label} "
            "uses diffusers' Karras sigmas (rho 7, the inference grid's range): drop those flags or use --sampler euler"
        )
    return {"use_karras_sigmas": True}, {}


def build_scheduler(base, choice: SamplerChoice, steps: int) -> tuple[Any, dict[str, Any]]:
    """The scheduler for ``choice`` built from ``base`` (the pipeline's scheduler), and extra pipeline kwargs.

    ``Cls.from_config(base.config, **overrides)``; the kwargs hold ``sigmas`` for ``--discretization edm``.
    Raises UserError for an unknown name or a discretization the scheduler cannot take.
    """
    if choice.name is not None and choice.name not in SAMPLERS:
        raise UserError(f"unknown --sampler {choice.name!r}; choose one of {', '.join(SAMPLERS)}")
    spec = SAMPLERS.get(choice.name) if choice.name else None
    cls = scheduler_class(spec.scheduler) if spec else type(base)
    overrides, call_kwargs = dict(spec.overrides) if spec else {}, {}
    if choice.discretization == "edm":
        extra, call_kwargs = _edm(cls, base, choice, steps)
        overrides.update(extra)
    elif choice.discretization is not None:
        grid = DISCRETIZATIONS[choice.discretization]
        if cls is diffusers.EulerAncestralDiscreteScheduler and choice.discretization == "legacy":
            cls = EulerAncestralWithStepNoise  # the same sampler, taking custom timesteps
        if not set(grid) <= _init_params(cls):
            raise UserError(
                f"--discretization {choice.discretization} needs timestep_spacing, which {cls.__name__} lacks"
            )
        overrides.update(grid)
        if choice.discretization == "legacy":
            call_kwargs = _legacy(cls, base, choice.name or cls.__name__, steps)
    elif (choice.sigma_min, choice.sigma_max, choice.rho) != (None, None, None):
        raise UserError("--sigma_min/--sigma_max/--rho apply to --discretization edm; add --discretization edm")
    if spec is None and not overrides:
        return base, call_kwargs
    return cls.from_config(base.config, **overrides), call_kwargs
