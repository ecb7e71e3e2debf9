"""The sampler registry against diffusers called directly, the parity samplers against k-diffusion's formulas,
and the discretizations against MindONE's grids (upstream facts 4a)."""

from __future__ import annotations

import re

import diffusers
import numpy as np
import pytest
import torch

from diffusers_npu import samplers
from diffusers_npu.errors import UserError
from diffusers_npu.inference import args

# diffusers' schedulers hand torch tensors to numpy (numpy 2 __array__ DeprecationWarnings), thousands per run.
pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")


# What each name means, stated independently of the registry: (diffusers class, config overrides).
DPM = dict(solver_order=2, use_karras_sigmas=False)
EXPECTED = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", dict(DPM, algorithm_type="dpmsolver++")),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", dict(DPM, algorithm_type="dpmsolver++", use_karras_sigmas=True)),
    "dpm++sde": ("DPMSolverMultistepScheduler", dict(DPM, algorithm_type="sde-dpmsolver++")),
    "dpm++sde-karras": (
        "DPMSolverMultistepScheduler", dict(DPM, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True),
    ),
    "lms": ("LMSDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", dict(skip_prk_steps=True)),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}  # fmt: skip
HAND_WRITTEN = {"dpm++2s-a"}  # CLARIFICATIONS: the one parity sampler diffusers lacks


def _latents(pipe, scheduler, steps: int = 2, seed: int = 0, **kwargs) -> torch.Tensor:
    pipe.scheduler = scheduler
    generator = torch.Generator().manual_seed(seed)
    out = pipe("a red circle", num_inference_steps=steps, height=32, width=32, generator=generator,
               output_type="latent", **kwargs)  # fmt: skip
    return out.images


def test_registry_names_are_the_issue_list():
    assert set(samplers.SAMPLERS) == set(EXPECTED) | HAND_WRITTEN


@pytest.mark.parametrize("name", sorted(samplers.SAMPLERS))
def test_every_sampler_runs_two_steps_and_matches_diffusers(sd15, name):
    base = sd15.scheduler
    try:
        ours, extra = samplers.build_scheduler(base, samplers.SamplerChoice(name), 2)
        got = _latents(sd15, ours, **extra)
        assert torch.isfinite(got).all()
        if name in HAND_WRITTEN:
            return  # checked against k-diffusion's algorithm below
        cls, overrides = EXPECTED[name]
        assert type(ours).__name__ == cls
        expected = _latents(sd15, getattr(diffusers, cls).from_config(base.config, **overrides))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    finally:
        sd15.scheduler = base


def test_mindone_samplers_each_map_to_a_name():
    mindone = {"EulerEDMSampler", "HeunEDMSampler", "EulerAncestralSampler", "DPMPP2SAncestralSampler",
               "DPMPP2MSampler", "LinearMultistepSampler", "LCMSampler"}  # fmt: skip
    assert set(samplers.MINDONE_ALIASES) == mindone
    for alias, name in samplers.MINDONE_ALIASES.items():
        assert name in samplers.SAMPLERS
        assert samplers.canonical_name(alias) == name


def test_help_lists_every_name_and_accepts_mindone_aliases():
    parser = args.new_parser("x")
    args.add_sampling_args(parser)
    text = " ".join(parser.format_help().split())
    for name in [*samplers.SAMPLERS, *samplers.MINDONE_ALIASES]:
        assert name in text
    assert parser.parse_args(["--sampler", "DPMPP2MSampler"]).sampler == "dpm++2m"


# ---- hand-written parity steps vs k-diffusion --------------------------------------------------------------------


def _toy_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The optimal denoiser for unit-Gaussian data: E[x0 | x0 + sigma n = x] = x / (1 + sigma^2)."""
    return x / (1 + sigma**2)


def _k_diffusion_dpmpp_2s_ancestral(x, sigmas, noises):
    """k_diffusion.sampling.sample_dpmpp_2s_ancestral (eta 1, s_noise 1) with the toy denoiser, verbatim maths."""
    t_fn, sigma_fn = (lambda s: s.log().neg()), (lambda t: t.neg().exp())
    for i in range(len(sigmas) - 1):
        denoised = _toy_denoiser(x, sigmas[i])
        sigma_up = min(
            sigmas[i + 1], (sigmas[i + 1] ** 2 * (sigmas[i] ** 2 - sigmas[i + 1] ** 2) / sigmas[i] ** 2) ** 0.5
        )
        sigma_down = (sigmas[i + 1] ** 2 - sigma_up**2) ** 0.5
        if sigma_down == 0:
            x = x + (x - denoised) / sigmas[i] * (sigma_down - sigmas[i])
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigma_down)
            r, h = 1 / 2, t_fn(sigma_down) - t_fn(sigmas[i])
            s = t + r * h
            x_2 = (sigma_fn(s) / sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = _toy_denoiser(x_2, sigma_fn(s))
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noises[i] * sigma_up
    return x


def _drive(scheduler, x, sigma_of_state):
    """A pipeline's loop over ``scheduler`` with an epsilon model built from the toy denoiser."""
    for t in scheduler.timesteps:
        scaled = scheduler.scale_model_input(x, t)
        sigma = sigma_of_state(scheduler)
        eps = (scaled * (sigma**2 + 1) ** 0.5 - _toy_denoiser(scaled * (sigma**2 + 1) ** 0.5, sigma)) / sigma
        x = scheduler.step(eps, t, x).prev_sample
    return x


class _Noise:
    def __init__(self, noises):
        self.noises, self.i = noises, 0

    def draw(self, shape, generator, device, dtype):
        self.i += 1
        return self.noises[self.i - 1].to(device, dtype)


@pytest.mark.parametrize("steps", [2, 5])
def test_dpmpp_2s_ancestral_follows_k_diffusion(steps):
    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading",
                  steps_offset=1)  # fmt: skip
    sched = samplers.DPMPP2SAncestralScheduler(**config)
    sched.set_timesteps(steps)
    sigmas = diffusers.EulerAncestralDiscreteScheduler(**config)
    sigmas.set_timesteps(steps)
    sigmas = sigmas.sigmas.double()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64)
    noises = [torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64) for _ in range(steps - 1)]
    sched.step_noise = _Noise(noises)
    sched.sigmas, sched.sigmas_interpol = sched.sigmas.double(), sched.sigmas_interpol.double()
    sched.sigmas_up, sched.sigmas_down = sched.sigmas_up.double(), sched.sigmas_down.double()

    def sigma_of_state(s):
        i = s.step_index if s.step_index is not None else 0
        return s.sigmas[i] if s.state_in_first_order else s.sigmas_interpol[i - 1]

    got = _drive(sched, x0 * sigmas[0], sigma_of_state)
    expected = _k_diffusion_dpmpp_2s_ancestral(x0 * sigmas[0], sigmas, noises)
    assert sched.step_noise.i == steps - 1
    # The scheduler's sigma tables are built in float32 (diffusers), k-diffusion's midpoints here in float64.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - x0 * sigmas[0]).abs().max() > 1e-2  # it moved


def test_euler_ancestral_step_with_fed_noise_equals_diffusers(sd15):
    """Identical noise: our noise-fed Euler-ancestral step gives diffusers' result bit for bit."""
    base = sd15.scheduler
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    try:
        reference = diffusers.EulerAncestralDiscreteScheduler.from_config(base.config)
        expected = _latents(sd15, reference, steps=3, latents=latents)  # noise from generator seed 0
        gen = torch.Generator().manual_seed(0)
        noises = [torch.randn(1, 4, 16, 16, generator=gen) for _ in range(3)]
        fed = samplers.with_step_noise(reference, _Noise(noises))
        got = _latents(sd15, fed, steps=3, latents=latents, seed=99)
    finally:
        sd15.scheduler = base
    assert fed.step_noise.i == 3
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_step_noise_support():
    base = diffusers.DDIMScheduler()
    ok = {"euler_a", "dpm++sde", "dpm++sde-karras", "dpm++2s-a"}
    for name in samplers.SAMPLERS:
        scheduler, _ = samplers.build_scheduler(base, samplers.SamplerChoice(name), 2)
        refusal = samplers.step_noise_refusal(scheduler, eta=1.0)
        assert (refusal is None) == (name in ok | {"ddim"}), (name, refusal)
    ddim, _ = samplers.build_scheduler(base, samplers.SamplerChoice("ddim"), 2)
    assert "--eta" in samplers.step_noise_refusal(ddim, eta=0.0)


# ---- discretizations -----------------------------------------------------------------------------------------------


def _timesteps(name: str, discretization: str | None, steps: int) -> np.ndarray:
    base = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler, _ = samplers.build_scheduler(base, samplers.SamplerChoice(name, discretization), steps)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.numpy()


def mindone_legacy(n: int, linear_start: float = 0.00085, linear_end: float = 0.012, num_timesteps: int = 1000):
    """MindONE's LegacyDDPMDiscretization from its formulas (mindone examples/stable_diffusion_xl/gm/modules/
    diffusionmodules/discretizer.py, ``generate_roughly_equally_spaced_steps`` and ``LegacyDDPMDiscretization``;
    ``make_beta_schedule("linear")`` = linspace(start^0.5, end^0.5, n)^2): (timesteps ascending, sigmas
    descending with the appended 0)."""
    betas = np.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    if n < num_timesteps:
        timesteps = np.linspace(num_timesteps - 1, 0, n, endpoint=False).astype(int)[::-1]
        ac = alphas_cumprod[timesteps]
    else:
        timesteps, ac = np.arange(num_timesteps), alphas_cumprod
    sigmas = np.flip(((1 - ac) / ac) ** 0.5, (0,))
    return timesteps, np.append(sigmas, 0.0)


GRID_SAMPLERS = ("euler", "euler_a", "heun", "dpm++2m", "lcm", "ddpm")


def _on_grid(name: str, discretization: str, steps: int):
    base = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler, kwargs = samplers.build_scheduler(base, samplers.SamplerChoice(name, discretization), steps)
    scheduler.set_timesteps(device="cpu", **kwargs) if kwargs else scheduler.set_timesteps(steps)
    return scheduler, kwargs


@pytest.mark.parametrize("name", GRID_SAMPLERS)
def test_legacy_grid_is_mindones_for_every_step_count(name):
    """--discretization legacy gives MindONE's grid for n = 1..100, not only where 1000 / n works out: the same
    integer timesteps, and for the sigma-space samplers the same sigmas (diffusers keeps its training schedule in
    float32: 1e-5 of MindONE's float64)."""
    for n in range(1, 101):
        timesteps, sigmas = mindone_legacy(n)
        scheduler, kwargs = _on_grid(name, "legacy", n)
        if "timesteps" in kwargs:
            assert kwargs["timesteps"] == timesteps[::-1].tolist(), n
        if samplers.SAMPLERS[name].sigma_space or "sigmas" in kwargs:
            got = scheduler.sigmas.double().numpy()
            np.testing.assert_allclose(
                np.unique(got)[::-1], np.unique(sigmas)[::-1], rtol=1e-5, err_msg=f"{name} n={n}"
            )
        else:
            np.testing.assert_array_equal(
                scheduler.timesteps.numpy().astype(int), timesteps[::-1], err_msg=f"{name} n={n}"
            )
    ours = samplers.legacy_timesteps(30)  # 30 steps: diffusers' "trailing" puts one timestep elsewhere
    trailing = diffusers.EulerDiscreteScheduler(timestep_spacing="trailing")
    trailing.set_timesteps(30)
    assert ours != trailing.timesteps.int().tolist()


@pytest.mark.parametrize("name", ["lms", "ddim", "pndm", "dpm++2s-a", "unipc"])
def test_samplers_without_a_custom_grid_are_refused_under_legacy(name):
    base = diffusers.EulerDiscreteScheduler()
    with pytest.raises(UserError, match=re.escape(f"{name} takes no custom timesteps or sigmas")):
        samplers.build_scheduler(base, samplers.SamplerChoice(name, "legacy"), 30)


def test_legacy_scales_the_initial_noise_as_mindone(sd15, tmp_path):
    """MindONE's prepare_sampling_loop: ``x *= sqrt(1 + sigmas[0] ** 2)``; our legacy euler run, from fixed latents,
    equals stock diffusers given MindONE's timesteps and that scale, pixel for pixel (CPU fp32)."""
    from .helpers import pngs, run_script

    steps = 30
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))  # the tiny VAE downsamples by 2
    np.save(tmp_path / "x.npy", latents.numpy())
    record = run_script("text-to-image", tmp_path / "ours", "--height", "32", "--width", "32", "--num_inference_steps", str(steps), "--sampler",
                        "euler", "--discretization", "legacy", "--init_latent_path", str(tmp_path / "x.npy"))  # fmt: skip
    timesteps, sigmas = mindone_legacy(steps)
    assert record["resolved"]["init_noise_sigma"] == pytest.approx(float(np.sqrt(1.0 + sigmas[0] ** 2)), rel=1e-6)
    reference = diffusers.EulerDiscreteScheduler.from_config(sd15.scheduler.config, timestep_spacing="leading")
    sd15.scheduler = reference
    image = sd15(record["params"]["prompt"], timesteps=timesteps[::-1].tolist(), latents=latents, height=32, width=32,
                 guidance_scale=record["params"]["guidance_scale"], output_type="pil").images[0]  # fmt: skip
    np.testing.assert_array_equal(np.asarray(image), pngs(tmp_path / "ours")["p0000_s0.png"])


@pytest.mark.parametrize("steps", [40, 7])
def test_diffusers_grid_is_leading_with_offset_one(steps):
    """MindONE DiffusersDDPMDiscretization: (arange(n) * (1000 // n))[::-1] + 1."""
    mindone = (np.arange(steps) * (1000 // steps))[::-1] + 1
    np.testing.assert_array_equal(_timesteps("ddim", "diffusers", steps), mindone)
    np.testing.assert_array_equal(_timesteps("euler", "diffusers", steps), mindone)


def test_edm_defaults_equal_diffusers_karras_sigmas(sd15):
    base = sd15.scheduler
    sigma_min, sigma_max = samplers.trained_sigma_range(base)
    try:
        ours, extra = samplers.build_scheduler(base, samplers.SamplerChoice("euler", "edm"), 3)
        got = _latents(sd15, ours, steps=3, **extra)
        karras = diffusers.EulerDiscreteScheduler.from_config(
            base.config, use_karras_sigmas=True, sigma_min=sigma_min, sigma_max=sigma_max
        )
        expected = _latents(sd15, karras, steps=3)
    finally:
        sd15.scheduler = base
    torch.testing.assert_close(ours.sigmas, karras.sigmas, rtol=1e-6, atol=0)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_edm_options_set_the_sigmas():
    sigmas = samplers.edm_sigmas(5, 0.002, 80.0, 7.0)
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-2] == pytest.approx(0.002) and sigmas[-1] == 0.0
    assert samplers.edm_sigmas(5, 0.002, 80.0, 3.0)[2] != pytest.approx(sigmas[2])
    base = diffusers.EulerDiscreteScheduler()
    choice = samplers.SamplerChoice("euler", "edm", 0.03, 14.61, 3.0)
    _, extra = samplers.build_scheduler(base, choice, 4)
    assert extra["sigmas"] == samplers.edm_sigmas(4, 0.03, 14.61, 3.0)
    with pytest.raises(UserError, match="--rho"):
        samplers.build_scheduler(base, samplers.SamplerChoice("heun", "edm", rho=3.0), 4)
    heun, extra = samplers.build_scheduler(base, samplers.SamplerChoice("heun", "edm"), 4)
    assert heun.config.use_karras_sigmas and not extra
    with pytest.raises(UserError, match="--discretization edm"):
        samplers.build_scheduler(base, samplers.SamplerChoice("euler", rho=3.0), 4)


def test_mindone_aliases_carry_mindones_settings():
    """Each MindONE name maps to a sampler whose settings are MindONE's as its sampler code builds them
    (mindone examples/stable_diffusion_xl/gm/helpers.py get_sampler, gm/modules/diffusionmodules/sampler.py)."""
    import inspect

    assert set(samplers.MINDONE_SETTINGS) == set(samplers.MINDONE_ALIASES)
    base = diffusers.EulerDiscreteScheduler()

    def built(alias):
        return samplers.build_scheduler(base, samplers.SamplerChoice(samplers.canonical_name(alias)), 10)[0]

    def step_default(scheduler, name):
        return inspect.signature(type(scheduler).step).parameters[name].default

    assert step_default(built("EulerEDMSampler"), "s_churn") == 0.0
    # EulerAncestralSampler's eta=0.001 never reaches its step: ours has eta 1, diffusers' has no eta at all.
    assert "eta" not in inspect.signature(type(built("EulerAncestralSampler")).step).parameters
    dpm = built("DPMPP2MSampler").config
    assert (dpm.solver_order, dpm.algorithm_type, dpm.solver_type, dpm.final_sigmas_type) == (
        2,
        "dpmsolver++",
        "midpoint",
        "zero",
    )
    assert step_default(built("LinearMultistepSampler"), "order") == 4
    assert isinstance(built("LCMSampler"), diffusers.LCMScheduler)
    assert type(built("DPMPP2SAncestralSampler")).__name__ == "DPMPP2SAncestralScheduler"
