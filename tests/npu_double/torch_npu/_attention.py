"""``torch_npu.npu_fusion_attention`` per op-plugin docs/context/torch_npu-npu_fusion_attention.md."""

from __future__ import annotations

import torch

_LAYOUTS = ("BNSD", "BSND", "BSH", "SBH")


def _to_bnsd(x: torch.Tensor, layout: str, heads: int) -> torch.Tensor:
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(1, 2)
    if layout == "SBH":
        x = x.transpose(0, 1)
    batch, seq, hidden = x.shape
    return x.view(batch, seq, heads, hidden // heads).transpose(1, 2)


def _from_bnsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(1, 2)
    batch, heads, seq, dim = x.shape
    x = x.transpose(1, 2).reshape(batch, seq, heads * dim)
    return x if layout == "BSH" else x.transpose(0, 1)


def npu_fusion_attention(
    query, key, value, head_num, input_layout, pse=None, padding_mask=None, atten_mask=None, scale=1.0,
    keep_prob=1.0, pre_tockens=2147483647, next_tockens=2147483647, inner_precise=0, prefix=None,
    actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False,
):  # fmt: skip
    """out = Softmax(Mask(scale * (pse + Q K^T), atten_mask)) V; returns the documented 7-tuple."""
    if input_layout not in _LAYOUTS:
        raise RuntimeError(f"input_layout {input_layout} not supported by the contract double")
    if query.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise RuntimeError(f"npu_fusion_attention: dtype {query.dtype} not supported")
    if keep_prob != 1.0 or sparse_mode != 0 or padding_mask is not None:
        raise NotImplementedError("contract double: keep_prob<1, sparse_mode!=0 and padding_mask are not modelled")
    if atten_mask is not None and atten_mask.dtype not in (torch.bool, torch.uint8):
        raise RuntimeError("npu_fusion_attention: atten_mask must be bool or uint8 (1/True = masked out)")
    if atten_mask is not None and atten_mask.ndim not in (2, 4):
        raise RuntimeError("npu_fusion_attention: atten_mask shape must be BNSS, B1SS, 11SS or SS")
    with torch.autocast("cpu", enabled=False):  # a fused kernel: autocast does not reach inside it
        return _attention(query, key, value, head_num, input_layout, pse, atten_mask, scale)


def _attention(query, key, value, head_num, input_layout, pse, atten_mask, scale):
    q, k, v = (_to_bnsd(t, input_layout, head_num).float() for t in (query, key, value))
    scores = torch.matmul(q, k.transpose(-1, -2))  # (B, N, Sq, Sk)
    if pse is not None:
        scores = scores + pse.float()
    scores = scores * scale
    if atten_mask is not None:
        scores = scores.masked_fill(atten_mask.bool(), torch.finfo(torch.float32).min)
    probs = scores.softmax(dim=-1)
    out = _from_bnsd(torch.matmul(probs, v).to(query.dtype), input_layout)
    softmax_max = scores.amax(dim=-1, keepdim=True)
    softmax_sum = (scores - softmax_max).exp().sum(dim=-1, keepdim=True)
    return out, softmax_max, softmax_sum, torch.empty(0), 0, 0, 0
