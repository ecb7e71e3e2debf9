"""Shared helpers for the training tests: run an example script, parse the summary line, tiny model paths."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "text_to_image"
SUMMARY = re.compile(
    r"^loss=(\S+) fps=(\S+) step_time_s=(\S+) data_wait_s=(\S+) peak_mem_gib=(\S+) time_s=(\S+) steps=(\d+)", re.M
)


def train(script: str, out: Path, data: Path, *extra: str, check: bool = True, env: dict | None = None,
          steps: int = 2, kill_after_checkpoint: int | None = None,
          fault: tuple[str, int] | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    """Run ``examples/text_to_image/<script>`` on tiny settings; ``extra`` flags come last and win.

    ``kill_after_checkpoint=N``: SIGKILL the run right after its checkpoint of step N (kill_after_checkpoint.py);
    ``fault=(KIND, N)``: a fault_at_step.py fault (sigterm, sigint, enospc) after step N."""
    if kill_after_checkpoint is not None:
        fault = [str(Path(__file__).with_name("kill_after_checkpoint.py")), str(kill_after_checkpoint)]
    elif fault is not None:
        fault = [str(Path(__file__).with_name("fault_at_step.py")), fault[0], str(fault[1])]
    else:
        fault = []
    cmd = [sys.executable, *fault, str(EXAMPLES / script), "--train_data_dir", str(data), "--output_dir", str(out),
           "--resolution", "32", "--train_batch_size", "2", "--max_train_steps", str(steps), "--learning_rate", "1e-3",
           "--checkpointing_steps", "1000", *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def tiny_path(kind: str) -> str:
    from diffusers_npu import tiny

    return str(tiny.tiny_model_path(kind))


def assert_summary(stdout: str, steps: int) -> None:
    match = SUMMARY.search(stdout)
    assert match, stdout[-2000:]
    assert int(match.group(7)) == steps and float(match.group(2)) > 0 and float(match.group(1)) > 0
