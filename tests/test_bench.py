"""bench/train_throughput.py end to end on the tiny SD2.1 models: both variants time, and --check agrees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "train_throughput.py"
TINY = ["--arch", "tiny-sd21", "--steps", "2", "--warmup", "1", "--batch_size", "2", "--resolution", "32"]


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_tiny_run_times_both_variants_and_check_passes(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_bench(*TINY, "--mixed_precision", "no", "--check", "--json_out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == record  # the last stdout line is the same JSON
    by_name = {v["variant"]: v for v in record["variants"]}
    assert set(by_name) == {"peer", "ours"}
    for variant in by_name.values():
        assert variant["img_per_s"] > 0 and variant["step_time_s"] > 0
        assert len(variant["losses"]) == 3  # warm-up + timed steps
    # Same weights, inputs, noise and timesteps: the first (pre-update) losses agree across variants too.
    assert by_name["peer"]["losses"][0] == pytest.approx(by_name["ours"]["losses"][0], rel=1e-5)
    check = record["check"]
    assert check["passed"] is True and check["max_rel_diff"] <= check["rtol"]
    assert len(check["peer_losses"]) == len(check["ours_losses"]) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "sd3"], "error: unknown --arch 'sd3'; choose one of tiny-sd21, sd21, sdxl"),
        (
            ["--variants", "peer,theirs"],
            "error: unknown --variants 'theirs'; use a comma list of peer, ours, ours-compile",
        ),
    ],
)
def test_bad_choice_is_one_error_line_and_exit_2(args, message):
    proc = run_bench(*args)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [message], proc.stderr
    assert "Traceback" not in proc.stderr
