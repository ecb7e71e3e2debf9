"""What a training run measured, and the one summary line every run ends with (launchers and bench/ parse it)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class RunStats:
    """What a run measured. Step time = one optimizer step (all micro-batches) minus data-loader wait,
    device-synchronised; the first ``timing_warmup_steps`` are excluded from the medians."""

    global_batch: int
    warmup: int
    step_losses: list[float] = field(default_factory=list)
    step_times_s: list[float] = field(default_factory=list)
    data_waits_s: list[float] = field(default_factory=list)
    peak_mem_gib: float = 0.0
    time_s: float = 0.0

    def _timed(self, values: list[float]) -> list[float]:
        return values[self.warmup :] or values

    @property
    def step_time_s(self) -> float:
        return statistics.median(self._timed(self.step_times_s)) if self.step_times_s else float("nan")

    def summary_line(self) -> str:
        """The one parseable line every run ends with (launchers grep it)."""
        window = self.step_losses[-max(1, len(self.step_losses) // 10) :] or [float("nan")]
        wait = statistics.median(self._timed(self.data_waits_s)) if self.data_waits_s else float("nan")
        return (
            f"loss={statistics.fmean(window):.6f} fps={self.global_batch / self.step_time_s:.3f} "
            f"step_time_s={self.step_time_s:.4f} data_wait_s={wait:.4f} peak_mem_gib={self.peak_mem_gib:.3f} "
            f"time_s={self.time_s:.1f} steps={len(self.step_losses)} global_batch={self.global_batch}"
        )
