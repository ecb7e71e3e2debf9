"""``torch_npu.optim.NpuFusedAdamW`` per torch_npu/optim/npu_fused_adamw.py and npu_fused_optim_base.py.

Deviation: parameters are not combined into one flat buffer (``npu_combine_tensors``); the update is the
documented AdamW maths via ``torch.optim.AdamW`` (foreach off), so results match torch AdamW exactly.
"""

from __future__ import annotations

import torch


class NpuFusedAdamW(torch.optim.AdamW):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, foreach=False
        )

    def zero_grad(self, set_to_none: bool = False):
        # npu_fused_optim_base.py L127-142: combined grad buffers cannot be released.
        if set_to_none:
            raise ValueError("set_to_none is not supported in fused optimizers")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.detach_()
                    p.grad.zero_()

    def clip_grad_norm_fused_(self, max_norm, norm_type=2):
        """L2 (or inf) norm of all grads; scale by max_norm/(norm+1e-6) if < 1. Does NOT unscale."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm_type = float(norm_type)
        if norm_type == float("inf"):
            total_norm = max(g.detach().abs().max() for g in grads)
        else:
            total_norm = torch.norm(torch.stack([torch.norm(g.detach(), norm_type) for g in grads]), norm_type)
        clip_coef = max_norm / (total_norm + 1e-6)
        if clip_coef < 1:
            for g in grads:
                g.detach().mul_(clip_coef)
        return total_norm
