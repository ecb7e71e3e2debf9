"""Run ``test_infer/`` scripts in-process (their ``main(argv)``) and read what they wrote."""

from __future__ import annotations

import functools
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "test_infer"
# 2 steps at 32x32 px (16x16 latents with the tiny VAE's scale factor 2): milliseconds per step on CPU.
FAST = ("--num_inference_steps", "2", "--height", "32", "--width", "32")


@functools.cache
def script_main(name: str):
    """The ``main`` of ``test_infer/<name>.py``."""
    return runpy.run_path(str(SCRIPTS / f"{name}.py"), run_name=f"test_infer.{name}")["main"]


def run_script(name: str, out: Path, *argv: str) -> dict:
    """Run a script to completion into ``out``; return its JSON record."""
    assert script_main(name)([*argv, "--output_dir", str(out)]) == 0
    return json.loads((out / f"{name}.json").read_text())


def script_error(name: str, capsys, *argv: str) -> str:
    """Run a script that must fail on bad input; return its one ``error:`` line (exit code 2 checked)."""
    with pytest.raises(SystemExit) as exc:
        script_main(name)(list(argv))
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def pngs(out: Path) -> dict[str, np.ndarray]:
    """Every PNG in ``out`` by file name, as uint8 arrays."""
    return {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}
