"""Faults a long run meets: divergence, preemption (1 and 2 processes), a full disk, a second run on the same
folder, a resume with changed settings. Each is one line and a non-zero exit, and nothing non-finite or half
written is left on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .helpers import EXAMPLES, ROOT, SUMMARY, train

FLAGS = ("--use_ema", "--random_flip", "--lr_scheduler", "cosine", "--lr_warmup_steps", "2")


def _error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def _all_finite(folder: Path) -> bool:
    return all(torch.isfinite(t).all() for f in folder.rglob("*.safetensors") for t in load_file(f).values())


@pytest.mark.slow
def test_divergence_stops_with_one_line_and_saves_nothing_non_finite(tmp_path, shapes):
    out = tmp_path / "out"
    proc = train("train_text_to_image.py", out, shapes, "--learning_rate", "1e12", "--max_grad_norm", "0",
                 "--checkpointing_steps", "1", steps=6, check=False)  # fmt: skip
    lines = _error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert ("diverged at step" in lines[0] or "hold NaN or inf" in lines[0]) and "last good checkpoint" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (out / "unet").exists(), "no final model after a divergence"
    assert _all_finite(out), "a checkpoint with non-finite weights was written"


@pytest.mark.slow
@pytest.mark.parametrize("fault,code", [("sigterm", 143), ("sigint", 130)])
def test_a_signal_checkpoints_the_current_step_and_resume_matches(tmp_path, shapes, fault, code):
    flags = (*FLAGS, "--checkpointing_steps", "1000")
    train("train_text_to_image.py", tmp_path / "straight", shapes, *flags, steps=6)
    stopped = train("train_text_to_image.py", tmp_path / "resumed", shapes, *flags, steps=6, check=False,
                    fault=(fault, 3))  # fmt: skip
    assert stopped.returncode == code, stopped.stderr[-2000:]
    assert "resume with --resume_from_checkpoint latest" in stopped.stderr
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-3"]
    train(
        "train_text_to_image.py", tmp_path / "resumed", shapes, *flags, "--resume_from_checkpoint", "latest", steps=6
    )
    a, b = (load_file(tmp_path / d / "unet" / "diffusion_pytorch_model.safetensors") for d in ("straight", "resumed"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.slow
def test_sigterm_on_one_of_two_ranks_stops_both_at_one_step(tmp_path, shapes):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).with_name("fault_at_step.py")), "sigterm", "2", str(EXAMPLES / "train_text_to_image.py"),
           "--train_data_dir", str(shapes), "--output_dir", str(out), "--resolution", "32", "--train_batch_size", "1",
           "--max_train_steps", "6", "--checkpointing_steps", "1000"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "RANK_ONLY": "1"})  # fmt: skip
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"], proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-2/random_states_*.pkl")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    cmd = [c for c in cmd if c not in ("sigterm",)]
    resume = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              *cmd[cmd.index(str(EXAMPLES / "train_text_to_image.py")):], "--resume_from_checkpoint", "latest"]  # fmt: skip
    proc = subprocess.run(resume, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0 and int(SUMMARY.search(proc.stdout).group(7)) == 4, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path, shapes, monkeypatch):
    out = tmp_path / "out"
    proc = train("train_text_to_image.py", out, shapes, "--checkpointing_steps", "2", steps=6, check=False,
                 fault=("enospc", 4))  # fmt: skip
    lines = _error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "no space left on" in lines[0] and "writing checkpoint-4" in lines[0] and "checkpoint-2" in lines[0]
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"], "tmp left behind"
    # Not enough free space for another checkpoint of the last one's size: refused before writing.
    from diffusers_npu import checkpoint
    from diffusers_npu.training import args, loop
    from diffusers_npu.training.recipes.sd import SDRecipe

    monkeypatch.setattr(checkpoint, "_free_bytes", lambda _path: 1000)
    argv = ["--train_data_dir", str(shapes), "--output_dir", str(out), "--resolution", "32", "--train_batch_size", "2",
            "--max_train_steps", "6", "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest"]  # fmt: skip
    cfg = args.parse_recipe_args(SDRecipe, "t", "tiny:sd15", argv)
    with pytest.raises(
        checkpoint.UserError, match="not enough space on .* for checkpoint-4 .* the last good one is checkpoint-2"
    ):
        loop.run(SDRecipe(cfg), cfg)


@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path, shapes):
    from diffusers_npu.training.faults import OutputLock

    out = tmp_path / "out"
    lock = OutputLock(out)
    lock.acquire()
    try:
        proc = train("train_text_to_image.py", out, shapes, check=False)
    finally:
        lock.release()
    lines = _error_lines(proc)
    assert proc.returncode == 2 and lines == [f"error: --output_dir {out} is in use by another run (pid {os.getpid()}); "
                                              "wait for it to finish or choose another --output_dir"], proc.stderr[-2000:]  # fmt: skip
    train("train_text_to_image.py", out, shapes)  # released (as by a process that died): the folder is free


@pytest.mark.slow
def test_resume_with_a_changed_batch_size_lists_the_change(tmp_path, shapes):
    out = tmp_path / "out"
    train("train_text_to_image.py", out, shapes, "--checkpointing_steps", "1", steps=2)
    proc = train("train_text_to_image.py", out, shapes, "--train_batch_size", "1", "--resolution", "40",
                 "--learning_rate", "5e-4", "--resume_from_checkpoint", "latest", steps=3, check=False)  # fmt: skip
    lines = _error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "resolution 32 -> 40; train_batch_size 2 -> 1" in lines[0] and "learning_rate" not in lines[0], lines[0]
    proc = train("train_text_to_image.py", out, shapes, "--learning_rate", "5e-4", "--resume_from_checkpoint",
                 "latest", steps=3)  # fmt: skip
    assert int(SUMMARY.search(proc.stdout).group(7)) == 1  # the learning rate may change freely
    proc = train("train_text_to_image.py", out, shapes, "--train_batch_size", "1", "--allow_changed_settings",
                 "--resume_from_checkpoint", "latest", steps=4)  # fmt: skip
    assert int(SUMMARY.search(proc.stdout).group(7)) == 1


def test_a_second_signal_exits_at_once():
    code = ("import os, signal, time\n"
            "from diffusers_npu.training.faults import Preemption\n"
            "p = Preemption(); p.install()\n"
            "os.kill(os.getpid(), signal.SIGTERM); assert p.received == signal.SIGTERM\n"
            "os.kill(os.getpid(), signal.SIGTERM); time.sleep(5); print('not reached')\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "not reached" not in proc.stdout, proc.stderr
