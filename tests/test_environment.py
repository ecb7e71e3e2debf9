"""``diffusers-npu env`` and the start-of-run check: the report's fields, and known-bad combinations refused.

A bad combination is simulated the way pip would leave it: a ``*.dist-info`` with another version placed ahead
of site-packages on PYTHONPATH, which ``importlib.metadata`` (and so the check) reads first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from diffusers_npu import environment

REPO = Path(__file__).resolve().parents[1]


def _fake_dist(root: Path, name: str, version: str) -> Path:
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


def _run(args: list[str], shadow: Path | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(environment.SKIP_ENV, None)
    if shadow is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(shadow), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, **kw)


def _v(**versions: str | None) -> dict[str, Version | None]:
    return {name.replace("_", "-"): Version(v) if v else None for name, v in versions.items()}


def test_env_prints_what_a_bug_report_needs():
    proc = _run(["-m", "diffusers_npu.cli", "env"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for field in ("python:", "torch:", "torch-npu:", "diffusers:", "transformers:", "peft:", "accelerate:",
                  "torch build:", "CANN:", "device: cpu x1", "attention runnable here: math, math_fp32, sdpa",
                  "optimizers runnable here: adamw", "problems: none known"):  # fmt: skip
        assert field in out, field
    assert "npu_fa" not in out.split("attention runnable here:")[1].splitlines()[0]  # not on this CPU


def test_env_json_has_the_same_fields_and_check_passes_here():
    proc = _run(["-m", "diffusers_npu.cli", "env", "--json", "--check"])
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["packages"]["diffusers"] and rep["device"]["kind"] == "cpu" and rep["problems"] == []
    assert "npu_fused_adamw" not in rep["runnable_here"]["optimizers"]


def test_env_check_flags_a_simulated_bad_combination(tmp_path):
    shadow = _fake_dist(_fake_dist(tmp_path, "transformers", "5.24.0"), "peft", "0.21.2")
    proc = _run(["-m", "diffusers_npu.cli", "env", "--check"], shadow)
    assert proc.returncode == 1
    line = next(x for x in proc.stdout.splitlines() if "needs peft>=0.22" in x)
    assert "transformers 5.24.0" in line and "pip install 'transformers<5.24'" in line
    assert _run(["-m", "diffusers_npu.cli", "env"], shadow).returncode == 0  # reported, not failed, without --check


@pytest.mark.parametrize(
    "script",
    [["examples/text_to_image/train_text_to_image.py", "--max_train_steps", "1"], ["test_infer/text-to-image.py"]],
)
def test_training_and_inference_refuse_a_bad_combination_before_loading(tmp_path, script):
    shadow = _fake_dist(tmp_path / "shadow", "torch-npu", "2.1.0")
    out = tmp_path / "out"
    proc = _run([str(REPO / script[0]), *script[1:], "--output_dir", str(out)], shadow, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert err.startswith("error: torch-npu 2.1.0 is built for torch 2.1.0") and "\n" not in err
    assert "pip install torch-npu==" in err and environment.SKIP_ENV in err
    assert not out.exists()


def test_incompatibility_rules_against_their_boundaries():
    bad = environment.incompatibilities
    assert bad(_v(transformers="5.24.0", peft="0.21.2"))
    assert not bad(_v(transformers="5.23.0", peft="0.21.2"))
    assert not bad(_v(transformers="5.24.0", peft="0.22.0"))
    assert not bad(_v(transformers="5.24.0", peft=None))  # no peft, nothing to refuse
    assert not bad(_v(torch="2.4.0", torch_npu="2.4.0.post2"))
    assert not bad(_v(torch="2.4.0+cpu", torch_npu="2.4.0"))
    assert bad(_v(torch="2.4.0", torch_npu="2.1.0.post3")) == [
        "torch-npu 2.1.0.post3 is built for torch 2.1.0, not the installed torch 2.4.0: pip install torch-npu==2.4.0"
    ]


def test_out_of_range_reads_the_declared_requirements():
    requires = ["diffusers>=0.35", "transformers<5.24,>=4.45", "bitsandbytes>=0.43; extra == 'bnb'"]
    versions = _v(diffusers="0.30.0", transformers="5.23.0", bitsandbytes="0.1")
    assert environment.out_of_range(requires, versions) == [
        "diffusers 0.30.0 is outside the tested range >=0.35: pip install 'diffusers>=0.35'"
    ]
    assert environment.out_of_range() == []  # this environment is inside every range


def test_check_environment_skip_and_warning(monkeypatch, capsys):
    monkeypatch.setattr(environment, "incompatibilities", lambda: ["x is broken: pip install y"])
    monkeypatch.setattr(
        environment, "out_of_range", lambda: ["z 1 is outside the tested range >=2: pip install 'z>=2'"]
    )
    with pytest.raises(environment.UserError, match="x is broken: pip install y"):
        environment.check_environment()
    monkeypatch.setenv(environment.SKIP_ENV, "1")
    environment.check_environment()
    monkeypatch.delenv(environment.SKIP_ENV)
    monkeypatch.setattr(environment, "incompatibilities", lambda: [])
    environment.check_environment()
    assert capsys.readouterr().err == "warning: z 1 is outside the tested range >=2: pip install 'z>=2'\n"


def test_cann_version_from_the_toolkit_install_record(tmp_path, monkeypatch):
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(tmp_path))
    assert environment.cann_version() is None
    (tmp_path / "aarch64-linux").mkdir()
    (tmp_path / "aarch64-linux" / "ascend_toolkit_install.info").write_text("package_name=x\nversion=8.0.RC2\n")
    assert environment.cann_version() == "8.0.RC2"
