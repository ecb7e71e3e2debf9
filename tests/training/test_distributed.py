"""Two processes (torchrun, gloo on CPU): one global batch of 2x2, one summary line, saved exactly once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .helpers import EXAMPLES, ROOT, SUMMARY


@pytest.mark.slow
def test_two_process_run_trains_and_saves_once(tmp_path, shapes):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(EXAMPLES / "train_text_to_image.py"), "--train_data_dir", str(shapes), "--output_dir", str(out),
           "--resolution", "32", "--train_batch_size", "2", "--max_train_steps", "2", "--checkpointing_steps", "2"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = SUMMARY.findall(proc.stdout)
    assert len(summaries) == 1 and "global_batch=4" in proc.stdout, proc.stdout[-2000:]
    assert proc.stderr.count("saved trained weights") == 1
    assert sorted(p.name for p in out.glob("checkpoint-2/random_states_*.pkl")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert [p.name for p in out.glob(".*")] == [".lock"], "no temporary directory may be left behind"
