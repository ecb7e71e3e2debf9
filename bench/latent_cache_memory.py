"""Memory and throughput of --cache_latents_to_disk on datasets of growing size: the product's own script.

For each size N it writes N generated 32x32 images, runs examples/text_to_image/train_text_to_image.py (tiny SD
model, CPU unless a device is present) with the disk cache as a separate process, and samples that process's
resident memory (/proc/PID/status VmRSS) while it runs. It reports the cache throughput (images encoded per
second, from the run's own "latent cache" log line: image check, keys and encoding), the peak RSS while caching and while training, and
the growth of the training peak from the smallest N to the largest. Linux only.

    python bench/latent_cache_memory.py --sizes 2000 20000 --steps 50 --json_out cache_memory.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "text_to_image" / "train_text_to_image.py"
CACHE_DONE = "latent cache "  # the line build_disk_cache logs when this rank's share is cached


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_one(size: int, steps: int, work: Path) -> dict:
    """One run on ``size`` images; returns the measured figures."""
    from diffusers_npu.training.data import make_shapes_dataset

    data = make_shapes_dataset(work / f"data-{size}", num_images=size, resolution=32, seed=0)
    cmd = [sys.executable, str(SCRIPT), "--train_data_dir", str(data), "--output_dir", str(work / f"out-{size}"),
           "--resolution", "32", "--train_batch_size", "8", "--max_train_steps", str(steps),
           "--checkpointing_steps", str(10**9), "--cache_latents_to_disk", "--dataloader_num_workers", "0"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    phase = {"training": False, "cache_s": None}
    peaks = {"caching": 0.0, "training": 0.0}
    lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append(line)
            if CACHE_DONE in line and not phase["training"]:
                phase["training"], phase["cache_s"] = True, time.perf_counter() - start

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    while proc.poll() is None:
        key = "training" if phase["training"] else "caching"
        peaks[key] = max(peaks[key], _rss_mib(proc.pid))
        time.sleep(0.1)
    reader.join()
    stdout = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"run on {size} images failed:\n{''.join(lines)[-3000:]}")
    summary = next(line for line in stdout.splitlines() if line.startswith("loss="))
    rate = re.search(r"in ([0-9.]+) s \(([0-9.]+) examples/s\)", next(x for x in lines if CACHE_DONE in x))
    return {"images": size, "steps": steps, "cache_s": float(rate.group(1)), "cache_images_per_s": float(rate.group(2)),
            "run_s_until_cached": round(phase["cache_s"], 1), "peak_rss_caching_mib": round(peaks["caching"]),
            "peak_rss_training_mib": round(peaks["training"]), "summary": summary}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--json_out", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_one(size, args.steps, Path(tmp)) for size in args.sizes]
    growth = rows[-1]["peak_rss_training_mib"] / rows[0]["peak_rss_training_mib"] - 1
    result = {"rows": rows, "training_peak_rss_growth": round(growth, 4)}
    for row in rows:
        print(f"images={row['images']} cache_images_per_s={row['cache_images_per_s']} "
              f"peak_rss_caching_mib={row['peak_rss_caching_mib']} peak_rss_training_mib={row['peak_rss_training_mib']}")  # fmt: skip
    print(f"training peak RSS growth {rows[0]['images']} -> {rows[-1]['images']} images: {growth:+.1%}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
