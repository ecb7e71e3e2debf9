"""The ``diffusers-npu`` console script: one entry point, ``--help`` on every subcommand, lazy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from diffusers_npu import cli
from diffusers_npu.convert import CONVERTERS


@pytest.mark.parametrize(
    "argv", [[], ["compare"], ["convert"]] + [["convert", what] for what in CONVERTERS], ids=" ".join
)
def test_help_on_every_subcommand(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: diffusers-npu {' '.join(argv)}".rstrip())


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["convert", "nonsense"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_help_and_compare_do_not_import_torch():
    code = ("import sys; from diffusers_npu import cli\n"
            "try: cli.main(['compare', '--help'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "diffusers-npu"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "convert" in out.stdout and "compare" in out.stdout
