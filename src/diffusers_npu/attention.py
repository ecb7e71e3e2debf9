"""Attention kernels chosen by one CLI word, and ONE diffusers attention processor that calls them.

Every kernel is a function ``(q, k, v, mask, scale) -> out`` in one declared layout, BNSD:
q ``(B, H, Sq, D)``, k/v ``(B, H, Sk, D)``, out ``(B, H, Sq, D)``. ``mask`` is None, a boolean keep-mask
(True = attend, torch's convention) or an additive float mask, broadcastable to ``(B, H, Sq, Sk)``.

UNet/VAE attention (diffusers ``Attention`` with the classic processors) gets :class:`KernelAttnProcessor`;
models that route through diffusers' attention dispatcher (the FLUX transformer) get the kernel's dispatcher
backend instead (:data:`DISPATCH_BACKENDS`). A processor per backend is never copied: diffusers' NPU copy
dropped ``norm_q``/``norm_k``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import devices
from .errors import UserError

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]

_HALF = frozenset({torch.float16, torch.bfloat16})
_ALL_FLOAT = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


@dataclass(frozen=True)
class KernelSpec:
    """A registered kernel and the constraints checked before it is used."""

    name: str
    fn: Kernel
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    doc: str = field(default="", compare=False)


KERNELS: dict[str, KernelSpec] = {}


def register_kernel(name: str, devices: set[str], dtypes: frozenset[torch.dtype]) -> Callable[[Kernel], Kernel]:
    """Decorator that adds a kernel to :data:`KERNELS` under its CLI word (after diffusers' backend registry)."""

    def add(fn: Kernel) -> Kernel:
        KERNELS[name] = KernelSpec(name, fn, frozenset(devices), dtypes, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return add


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A keep-mask as an additive mask in ``dtype`` (0 keep, -inf drop); additive masks pass through."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


@register_kernel("math", devices={"cpu", "cuda", "npu"}, dtypes=_ALL_FLOAT)
def math_attention(q, k, v, mask, scale):
    """Plain softmax(q k^T * scale + mask) v in the input dtype (the reference's ``get_attention_scores``)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Sq, Sk)
    mask = _additive(mask, scores.dtype)
    if mask is not None:
        scores = scores + mask
    return torch.matmul(scores.softmax(dim=-1), v)


@register_kernel("math_fp32", devices={"cpu", "cuda", "npu"}, dtypes=_ALL_FLOAT)
def math_fp32_attention(q, k, v, mask, scale):
    """Scores and softmax in fp32, output cast back: the reference's fix for fp16 bmm overflow without FA."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, Sq, Sk) fp32
    mask = _additive(mask, torch.float32)
    if mask is not None:
        scores = scores + mask
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


@register_kernel("sdpa", devices={"cpu", "cuda", "npu"}, dtypes=_ALL_FLOAT)
def sdpa_attention(q, k, v, mask, scale):
    """torch ``scaled_dot_product_attention``; torch picks flash / memory-efficient / math per call."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


@register_kernel("sdpa_flash", devices={"cuda"}, dtypes=_HALF)
def sdpa_flash_attention(q, k, v, mask, scale):
    """torch SDPA restricted to the FlashAttention backend (CUDA, fp16/bf16, no mask): errors, never falls back."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if mask is not None:
        raise UserError("--attention sdpa_flash takes no attention mask; use --attention sdpa")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def _npu_drop_mask(mask: torch.Tensor, batch: int, q_len: int) -> torch.Tensor:
    """Turn a keep-mask or additive mask into torch_npu's form: bool, True = masked OUT, shape B1SS or BNSS.

    torch_npu's ``atten_mask`` is the opposite of torch's boolean mask ("1/True = not computed",
    op-plugin docs/context/torch_npu-npu_fusion_attention.md). An additive mask (0 keep, large negative
    drop) is dropped where it is non-zero. Upstream diffusers' ``_maybe_modify_attn_mask_npu`` applies
    ``~mask.bool()`` to additive masks too, which masks exactly the positions that should be kept.
    A non-binary additive bias cannot be expressed as a drop-mask, so it is refused.
    """
    if mask.dtype == torch.bool:
        drop = ~mask
    else:
        if bool(((mask != 0) & (mask > -1e3)).any()):
            raise UserError("--attention npu_fa takes 0/-inf style masks only, not a float bias; use --attention sdpa")
        drop = mask != 0
    heads = drop.shape[1] if drop.ndim == 4 else 1
    drop = drop.reshape(*([1] * (4 - drop.ndim)), *drop.shape)
    return drop.expand(batch, heads, q_len, drop.shape[-1]).contiguous()


@register_kernel("npu_fa", devices={"npu"}, dtypes=_HALF)
def npu_flash_attention(q, k, v, mask, scale):
    """Ascend FlashAttention (``npu_fusion_attention`` from ``devices.npu_ops``), layout BNSD, as diffusers'
    AttnProcessorNPU."""
    batch, heads, q_len, _ = q.shape
    drop = None if mask is None else _npu_drop_mask(mask, batch, q_len)
    # pre/next_tockens=65536 and sparse_mode 0: full attention, as upstream diffusers calls it.
    return devices.npu_ops("--attention npu_fa").npu_fusion_attention(
        q, k, v, heads, input_layout="BNSD", pse=None, atten_mask=drop, scale=scale,
        pre_tockens=65536, next_tockens=65536, keep_prob=1.0, sync=False, inner_precise=0,
    )[0]  # fmt: skip


# Dispatcher-routed models (FLUX transformer) get diffusers' own backend for the same CLI word.
# math_fp32 has no dispatcher equivalent and is refused there rather than replaced.
DISPATCH_BACKENDS = {"npu_fa": "_native_npu", "sdpa": "native", "math": "_native_math", "sdpa_flash": "_native_flash"}


def check_kernel(name: str, device_kind: str, compute_dtype: torch.dtype | None = None) -> KernelSpec:
    """Return the spec for ``name`` or raise a one-line UserError naming the flag and the fix."""
    if name not in KERNELS:
        raise UserError(f"unknown --attention {name!r}; choose one of {', '.join(KERNELS)}")
    spec = KERNELS[name]
    if device_kind not in spec.devices:
        raise UserError(
            f"--attention {name} runs on {'/'.join(sorted(spec.devices))}, not {device_kind}; use --attention sdpa"
        )
    if compute_dtype is not None and compute_dtype not in spec.dtypes:
        raise UserError(
            f"--attention {name} needs fp16 or bf16 compute (--mixed_precision fp16|bf16); use --attention sdpa for fp32"
        )
    return spec


def _mask_to_4d(mask: torch.Tensor, batch: int, heads: int, kv_len: int) -> torch.Tensor:
    """Every mask form diffusers passes, as a tensor broadcastable to ``(B, H, Sq, Sk)``.

    Accepted: ``(B, Sk)``; ``(B, Sq|1, Sk)``; diffusers' head-repeated ``(B*H, Sq|1, Sk)``; ``(B, H|1, Sq|1, Sk)``.
    """
    if mask.shape[-1] != kv_len:
        raise UserError(
            f"attention mask has {mask.shape[-1]} key positions but the keys have {kv_len}; pass a mask per key"
        )
    if mask.ndim == 2:
        return mask[:, None, None, :]
    if mask.ndim == 3:
        if mask.shape[0] == batch * heads and heads > 1:
            return mask.view(batch, heads, -1, kv_len)
        return mask[:, None]
    return mask


class KernelAttnProcessor:
    """One processor for diffusers ``Attention``: projections, norms and reshapes, then the chosen kernel.

    Mirrors diffusers' ``AttnProcessor2_0`` (spatial_norm, group_norm, norm_cross, norm_q/norm_k,
    residual_connection, rescale_output_factor) but passes ``attn.scale`` to the kernel and honours
    ``attn.upcast_attention``: a kernel that would compute scores in half precision (``math``) is replaced
    by ``math_fp32`` for that layer, as diffusers' classic ``get_attention_scores`` upcasts.
    """

    def __init__(self, kernel: str = "sdpa"):
        self.kernel = kernel
        self.spec = KERNELS[kernel]

    def _kernel_for(self, attn, dtype: torch.dtype) -> Kernel:
        if dtype not in self.spec.dtypes:
            raise UserError(
                f"--attention {self.kernel} does not take {dtype} inputs; use --mixed_precision fp16|bf16 or --attention sdpa"
            )
        if self.kernel == "math" and dtype in _HALF and (attn.upcast_attention or attn.upcast_softmax):
            return math_fp32_attention
        return self.spec.fn

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)  # (B, HW, C)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)

        batch, kv_len = encoder_hidden_states.shape[0], encoder_hidden_states.shape[1]
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, Sq, D)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, H, Sk, D)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        mask = None if attention_mask is None else _mask_to_4d(attention_mask, batch, attn.heads, kv_len)

        out = self._kernel_for(attn, query.dtype)(query, key, value, mask, attn.scale)  # (B, H, Sq, D)
        hidden_states = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear proj, dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _uses_dispatcher(model: torch.nn.Module) -> bool:
    """True for models whose processors call diffusers' ``dispatch_attention_fn`` (FLUX and newer)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processors = getattr(model, "attn_processors", {})
    classic = (AttnProcessor, AttnProcessor2_0, KernelAttnProcessor)
    return bool(processors) and not all(isinstance(p, classic) for p in processors.values())


def set_attention(
    model: torch.nn.Module, name: str, device_kind: str, compute_dtype: torch.dtype | None = None
) -> None:
    """Make every attention layer of ``model`` use kernel ``name`` (checked against device and dtype)."""
    check_kernel(name, device_kind, compute_dtype)
    if _uses_dispatcher(model):
        if name not in DISPATCH_BACKENDS:
            raise UserError(
                f"--attention {name} is not available for {type(model).__name__}; use one of {', '.join(DISPATCH_BACKENDS)}"
            )
        model.set_attention_backend(DISPATCH_BACKENDS[name])
        return
    model.set_attn_processor(KernelAttnProcessor(name))
