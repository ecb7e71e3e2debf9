"""Attention kernel registry contract: every kernel against fp64 math attention, every mask form,
forward and gradients; the one processor on a whole UNet against stock diffusers processors."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from diffusers_npu import attention
from diffusers_npu.errors import UserError

B, H, SQ, SK, D = 2, 3, 5, 7, 8
# Stated tolerances per dtype: fp32 kernels vs fp64; half kernels compute softmax in fp32 but round
# inputs and outputs to 8 (bf16) / 11 (fp16) mantissa bits.
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def reference(q, k, v, keep):
    """fp64 softmax(q k^T / sqrt(D)) v with a boolean keep-mask (independent of the kernels)."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    return scores.softmax(-1) @ v


def keep_mask(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(B, SK, generator=g) > 0.4
    keep[:, 0] = True  # no fully masked row: its softmax is undefined in every implementation
    return keep


def mask_forms(keep: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """The mask forms diffusers hands a processor/kernel, all meaning the same keep pattern."""
    additive = torch.zeros(B, SK).masked_fill(~keep, -10000.0)
    return {
        "none": None,
        "bool_B11S": keep[:, None, None, :],
        "additive_B11S": additive[:, None, None, :],
        "additive_inf_B11S": torch.zeros(B, SK).masked_fill(~keep, float("-inf"))[:, None, None, :],
        "bool_BHQK": keep[:, None, None, :].expand(B, H, SQ, SK),
        "additive_BHQK": additive[:, None, None, :].expand(B, H, SQ, SK).clone(),
    }


def available(name: str, npu_active: bool) -> bool:
    devices = attention.KERNELS[name].devices
    return "cpu" in devices or (npu_active and "npu" in devices)


def run_contract(name: str, dtype: torch.dtype, form: str, npu_active: bool) -> None:
    spec = attention.KERNELS[name]
    if not available(name, npu_active):
        pytest.skip(f"{name} needs {sorted(spec.devices)}")
    if dtype not in spec.dtypes:
        pytest.skip(f"{name} does not take {dtype}")
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, s, D, generator=g) for s in (SQ, SK, SK))
    keep = keep_mask()
    mask = mask_forms(keep)[form]
    expect = reference(q, k, v, None if mask is None else keep)
    q_, k_, v_ = (t.to(dtype).requires_grad_() for t in (q, k, v))
    mask_ = mask.to(dtype) if mask is not None and mask.dtype != torch.bool else mask
    out = spec.fn(q_, k_, v_, mask_, D**-0.5)
    assert out.dtype == dtype and out.shape == (B, H, SQ, D)
    torch.testing.assert_close(out.double(), expect, atol=TOL[dtype], rtol=TOL[dtype])
    # gradients against fp64 autograd of the reference
    grad_out = torch.randn(B, H, SQ, D, generator=g)
    out.backward(grad_out.to(dtype))
    q64, k64, v64 = (t.double().requires_grad_() for t in (q_.detach(), k_.detach(), v_.detach()))
    reference(q64, k64, v64, None if mask is None else keep).backward(grad_out.double())
    for got, want in ((q_.grad, q64.grad), (k_.grad, k64.grad), (v_.grad, v64.grad)):
        torch.testing.assert_close(got.double(), want, atol=4 * TOL[dtype], rtol=4 * TOL[dtype])


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FORMS = list(mask_forms(keep_mask()))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", [n for n in attention.KERNELS if n != "npu_fa"])
def test_kernel_matches_fp64(name, dtype, form):
    run_contract(name, dtype, form, npu_active=False)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_npu_fa_matches_fp64_through_double(npu_double, dtype, form):
    run_contract("npu_fa", dtype, form, npu_active=True)


def test_npu_fa_passes_documented_arguments(npu_double, monkeypatch):
    """BNSD, head count, scale, True = masked out, B1SS shape: the documented call, captured."""
    seen = {}
    real = npu_double.npu_fusion_attention

    def spy(q, k, v, head_num, input_layout, **kw):
        seen.update(kw, head_num=head_num, input_layout=input_layout)
        return real(q, k, v, head_num, input_layout, **kw)

    monkeypatch.setattr(npu_double, "npu_fusion_attention", spy)
    q, k, v = (torch.randn(B, H, s, D, dtype=torch.float16) for s in (SQ, SK, SK))
    keep = keep_mask()
    attention.npu_flash_attention(q, k, v, keep[:, None, None, :], 0.25)
    assert seen["input_layout"] == "BNSD" and seen["head_num"] == H and seen["scale"] == 0.25
    assert seen["atten_mask"].dtype == torch.bool and seen["atten_mask"].shape == (B, 1, SQ, SK)
    assert torch.equal(seen["atten_mask"][:, 0, 0], ~keep)


def test_upstream_npu_mask_conversion_is_wrong_and_ours_is_right(npu_double):
    """diffusers' _maybe_modify_attn_mask_npu does ~mask.bool() on an additive mask: keeps become drops."""
    q, k, v = (torch.randn(B, H, s, D, dtype=torch.float16) for s in (SQ, SK, SK))
    keep = keep_mask()
    additive = torch.zeros(B, 1, 1, SK, dtype=torch.float16).masked_fill(~keep[:, None, None, :], -10000.0)
    upstream_drop = ~additive.to(torch.bool)  # True where additive == 0, i.e. where it should KEEP
    upstream = npu_double.npu_fusion_attention(
        q, k, v, H, "BNSD", atten_mask=upstream_drop.expand(B, 1, SQ, SK), scale=D**-0.5
    )[0]
    ours = attention.npu_flash_attention(q, k, v, additive, D**-0.5)
    expect = reference(q, k, v, keep)
    torch.testing.assert_close(ours.double(), expect, atol=3e-3, rtol=3e-3)
    assert (upstream.double() - expect).abs().max() > 0.1


def test_npu_fa_refuses_float_bias(npu_double):
    q, k, v = (torch.randn(1, 1, 2, 4, dtype=torch.float16) for _ in range(3))
    with pytest.raises(UserError, match="sdpa"):
        attention.npu_flash_attention(q, k, v, torch.full((1, 1, 1, 2), 0.5, dtype=torch.float16), 0.5)


def test_npu_fa_without_torch_npu_names_the_install():
    q = torch.randn(1, 1, 2, 4, dtype=torch.float16)
    with pytest.raises(ImportError, match="pip install torch-npu=="):
        attention.npu_flash_attention(q, q, q, None, 0.5)


def test_check_kernel_constraints():
    with pytest.raises(UserError, match="unknown --attention"):
        attention.check_kernel("flashy", "cpu")
    with pytest.raises(UserError, match="runs on npu, not cpu"):
        attention.check_kernel("npu_fa", "cpu")
    with pytest.raises(UserError, match="fp16 or bf16"):
        attention.check_kernel("npu_fa", "npu", torch.float32)
    assert attention.check_kernel("sdpa", "cpu", torch.float32).name == "sdpa"


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    ).eval()  # fmt: skip


def unet_inputs(mask: bool):
    g = torch.Generator().manual_seed(2)
    kwargs = {}
    if mask:
        keep = torch.ones(2, 6, dtype=torch.bool)
        keep[0, 4:] = False
        kwargs["encoder_attention_mask"] = keep
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 6, 16, generator=g), kwargs


@pytest.mark.parametrize("mask", [False, True], ids=["nomask", "encoder_mask"])
@pytest.mark.parametrize("name", ["math", "math_fp32", "sdpa"])
def test_whole_unet_matches_stock_processor(name, mask):
    sample, t, ctx, kwargs = unet_inputs(mask)
    unet = tiny_unet()
    unet.set_attn_processor(AttnProcessor())
    with torch.no_grad():
        expect = unet(sample, t, ctx, **kwargs).sample
        attention.set_attention(unet, name, "cpu")
        assert all(isinstance(p, attention.KernelAttnProcessor) for p in unet.attn_processors.values())
        got = unet(sample, t, ctx, **kwargs).sample
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)


def test_whole_unet_npu_fa_fp16_matches_stock_sdpa(npu_double):
    sample, t, ctx, kwargs = unet_inputs(mask=True)
    unet = tiny_unet()
    unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        expect = unet(sample, t, ctx, **kwargs).sample
        attention.set_attention(unet, "npu_fa", "npu", torch.float16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = unet(sample, t, ctx, **kwargs).sample
    torch.testing.assert_close(got.float(), expect, atol=0.05, rtol=0.05)


def test_processor_keeps_norm_qk():
    """A layer with norm_q/norm_k (qk_norm): the one processor applies them, as AttnProcessor2_0 does."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8, qk_norm="layer_norm").eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        attn.norm_q.weight.mul_(3.0)
        expect = attn(x)
        attn.set_processor(attention.KernelAttnProcessor("math"))
        got = attn(x)
        attn.set_processor(attention.KernelAttnProcessor("math"))
        attn.norm_q = None
        without = attn(x)
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(without, expect, atol=1e-3)


def test_math_honours_upcast_attention():
    """fp16 with upcast_attention: the math kernel is replaced by math_fp32 for that layer."""
    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=16, heads=2, dim_head=8, upcast_attention=True)
    proc = attention.KernelAttnProcessor("math")
    assert proc._kernel_for(attn, torch.float16) is attention.math_fp32_attention
    assert proc._kernel_for(attn, torch.float32) is attention.math_attention
