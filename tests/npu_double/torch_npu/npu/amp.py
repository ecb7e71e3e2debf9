"""``torch.npu.amp.GradScaler`` per torch_npu/npu/amp/grad_scaler.py (L93-102, L390-395, L436, L447-459).

``dynamic=False`` is a static loss scale: ``step`` always calls ``optimizer.step`` (no skip on inf/nan)
and ``update`` never changes the scale. ``state_dict`` carries ``"dynamic"``.
Deviation: built on ``torch.amp.GradScaler("cpu")``, so inf checks run on CPU tensors.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.amp.grad_scaler import OptState, _refresh_per_optimizer_state


class GradScaler(torch.amp.GradScaler):
    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 dynamic=True, enabled=True):  # fmt: skip
        super().__init__("cpu", init_scale=init_scale, growth_factor=growth_factor,
                         backoff_factor=backoff_factor, growth_interval=growth_interval, enabled=enabled)  # fmt: skip
        self._dynamic = dynamic

    def step(self, optimizer, *args, **kwargs):
        if not self._enabled or self._dynamic:
            return super().step(optimizer, *args, **kwargs)
        state = self._per_optimizer_states[id(optimizer)]
        if state["stage"] is OptState.READY:
            self.unscale_(optimizer)
        retval = optimizer.step(*args, **kwargs)  # static scale: never skipped, even on inf/nan
        state["stage"] = OptState.STEPPED
        return retval

    def update(self, new_scale=None):
        if self._enabled and self._dynamic:
            return super().update(new_scale)
        # static scale: the scale never changes; only the per-step bookkeeping is reset.
        self._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)

    def state_dict(self):
        state = super().state_dict()
        if self._enabled:
            state["dynamic"] = self._dynamic
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._dynamic = state_dict.get("dynamic", True)
