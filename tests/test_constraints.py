"""constraints.txt is the tested stack: it pins every direct dependency, agrees with pyproject.toml's ranges,
leaves torch to the machine, and is what the README commands' venv actually holds."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
# scripts/_env.sh stamps the venv it installed from constraints.txt.
FROM_ENV_SH = any(Path(sys.prefix).glob(".installed-*"))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(text: str) -> dict[str, Version]:
    pins = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            pins[_canonical(name)] = Version(version)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


PINS = _pins((REPO / "constraints.txt").read_text())


def test_every_direct_dependency_is_pinned_inside_its_declared_range():
    for req in _declared():
        name = _canonical(req.name)
        if name == "torch":
            assert name not in PINS, "torch is each machine's own build: never pin it"
            continue
        assert name in PINS, f"{name} is a dependency but constraints.txt does not pin it"
        assert req.specifier.contains(PINS[name], prereleases=True), f"{name}=={PINS[name]} outside {req}"


@pytest.mark.skipif(not FROM_ENV_SH, reason="only in the venv scripts/_env.sh installed from constraints.txt")
def test_the_venv_holds_exactly_the_pinned_versions():
    wrong = {n: (str(v), metadata.version(n)) for n, v in PINS.items() if Version(metadata.version(n)) != v}
    assert not wrong, f"installed differs from constraints.txt: {wrong}"


@pytest.mark.skipif(not FROM_ENV_SH, reason="only in the venv scripts/_env.sh installed from constraints.txt")
def test_refresh_constraints_reproduces_the_file_from_this_venv(tmp_path):
    out = tmp_path / "constraints.txt"
    subprocess.run([sys.executable, str(REPO / "scripts" / "refresh_constraints.py"), str(out)], check=True)
    assert _pins(out.read_text()) == PINS
