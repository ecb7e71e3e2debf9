"""Every ModelZoo-named launcher in test/ runs offline with --tiny, prints the summary and the ModelZoo lines,
and keeps its log in the output directory; one runs two processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = sorted(p.name for p in (ROOT / "test").glob("train_*.sh"))
SUMMARY = re.compile(r"^loss=\S+ fps=(\S+) step_time_s=\S+ .* steps=(\d+) global_batch=(\d+)$", re.M)


def launch(name: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["bash", str(ROOT / "test" / name), "--tiny", f"--output_dir={out}", "--max_train_steps=2", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_the_reference_launchers_exist():
    expected = {"train_full_1p_text_to_image.sh", "train_full_8p_text_to_image_sd2-1_fp16_fa.sh"} | {
        f"train_{kind}_8p_text_to_image_{model}_{p}.sh"
        for kind in ("full", "performance") for model in ("sd1-5", "sd2-1") for p in ("fp16", "fp32")
    }  # fmt: skip
    assert expected <= set(LAUNCHERS)


@pytest.mark.slow
@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_runs_tiny_on_one_process(tmp_path, name):
    proc = launch(name, tmp_path, "--nproc=1")
    match = SUMMARY.search(proc.stdout)
    assert match and match.group(2) == "2" and float(match.group(1)) > 0, proc.stdout[-2000:]
    assert re.search(r"^Final Performance images/sec : [0-9.]+$", proc.stdout, re.M)
    assert re.search(r"^Final Train Loss : [0-9.]+$", proc.stdout, re.M)
    assert SUMMARY.search((tmp_path / "train.log").read_text())
    case_logs = list(tmp_path.glob("*_1p_*.log"))
    assert len(case_logs) == 1 and "ActualFPS = " in case_logs[0].read_text()
    weights = "pytorch_lora_weights.safetensors" if "lora" in name else "unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / weights).is_file()


@pytest.mark.slow
def test_launcher_runs_two_processes(tmp_path):
    proc = launch("train_full_8p_text_to_image_sd1-5_fp16.sh", tmp_path, "--nproc=2")
    match = SUMMARY.search(proc.stdout)
    assert match and match.group(3) == "4", proc.stdout[-2000:]  # 2 processes x batch 2
    assert "cpu cannot train in fp16" in proc.stderr  # the replaced setting is said, never silent
