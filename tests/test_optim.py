"""Optimizer registry contract: every entry steps like torch AdamW or names its missing extra."""

from __future__ import annotations

import pytest
import torch

from diffusers_npu import optim
from diffusers_npu.errors import MissingExtraError, UserError

HPARAMS = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05, eps=1e-8)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, zero_grad_kwargs=None, steps: int = 4) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad(**(zero_grad_kwargs or {}))


def reference_params() -> list[torch.Tensor]:
    model = tiny_model()
    train(model, torch.optim.AdamW(model.parameters(), foreach=False, **HPARAMS))
    return [p.detach() for p in model.parameters()]


def assert_steps_like_adamw(name: str, device_kind: str, atol: float = 1e-6) -> None:
    model = tiny_model()
    try:
        opt = optim.build_optimizer(name, model.parameters(), device_kind, **HPARAMS)
    except MissingExtraError as err:
        assert optim.OPTIMIZERS[name].install_hint.split(":")[0] in str(err) or "pip install" in str(err)
        return
    train(model, opt, optim.OPTIMIZERS[name].zero_grad_kwargs)
    for got, want in zip(model.parameters(), reference_params()):
        torch.testing.assert_close(got.detach(), want, atol=atol, rtol=atol)


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_every_optimizer_steps_like_adamw_or_names_its_extra(name):
    spec = optim.OPTIMIZERS[name]
    kind = "cpu" if "cpu" in spec.devices else sorted(spec.devices)[0]
    if kind != "cpu":
        # Without the package, the error names the install; device checks come after the import.
        with pytest.raises(MissingExtraError) as info:
            optim.build_optimizer(name, tiny_model().parameters(), kind, **HPARAMS)
        assert (
            "pip install" in str(info.value)
            or "install it from" in str(info.value)
            or "built from source" in str(info.value)
        )
        return
    assert_steps_like_adamw(name, kind)


def test_npu_fused_adamw_through_double_matches_adamw(npu_double):
    assert_steps_like_adamw("npu_fused_adamw", "npu")


def test_npu_fused_adamw_zero_grad_contract(npu_double):
    """The zero_grad kwargs carried in the spec are what keeps NpuFusedAdamW working under accelerate."""
    model = tiny_model()
    opt = optim.build_optimizer("npu_fused_adamw", model.parameters(), "npu", **HPARAMS)
    model(torch.randn(2, 6)).sum().backward()
    with pytest.raises(ValueError, match="set_to_none"):
        opt.zero_grad(set_to_none=True)
    opt.zero_grad(**optim.OPTIMIZERS["npu_fused_adamw"].zero_grad_kwargs)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_missing_npu_names_torch_version():
    with pytest.raises(
        MissingExtraError, match=r"--optimizer npu_fused_adamw needs torch_npu: pip install torch-npu=="
    ):
        optim.build_optimizer("npu_fused_adamw", tiny_model().parameters(), "npu", **HPARAMS)


def test_apex_error_warns_against_pypi_apex():
    with pytest.raises(MissingExtraError, match="unrelated"):
        optim.build_optimizer("apex_fused_adam", tiny_model().parameters(), "cuda", **HPARAMS)


def test_device_and_name_errors():
    with pytest.raises(UserError, match="unknown --optimizer"):
        optim.build_optimizer("sgdx", tiny_model().parameters(), "cpu", lr=1.0)
    with pytest.raises(UserError, match="runs on cpu/cuda, not npu"):
        optim.build_optimizer("adamw_fused", tiny_model().parameters(), "npu", lr=1.0)


def scaled_grads(scale: float) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two identical models; the second's grads are multiplied by ``scale`` (as a GradScaler leaves them)."""
    a, b = tiny_model(), tiny_model()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    a(x).pow(2).sum().backward()
    (b(x).pow(2).sum() * scale).backward()
    return a, b


@pytest.mark.parametrize("fused", [False, True])
def test_clip_unscales_first(npu_double, fused):
    """Clipping scaled grads through the scaler gives exactly torch's clip of the true grads."""
    ref, model = scaled_grads(1024.0)
    ref_norm = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.5)
    opt = optim.build_optimizer("npu_fused_adamw", model.parameters(), "npu", lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # initialise the scale tensor as a real step would
    norm = optim.clip_grad_norm(model.parameters(), 0.5, opt, scaler=scaler, fused=fused)
    torch.testing.assert_close(norm, ref_norm)
    for got, want in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(got.grad, want.grad)


def test_fused_clip_without_unscale_is_what_the_reference_did(npu_double):
    """The reference's bug, shown: the fused clip on scaled grads measures loss_scale * norm."""
    ref, model = scaled_grads(1024.0)
    ref_norm = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 0.5)
    opt = optim.build_optimizer("npu_fused_adamw", model.parameters(), "npu", lr=1e-3)
    torch.testing.assert_close(opt.clip_grad_norm_fused_(0.5), ref_norm * 1024.0)
