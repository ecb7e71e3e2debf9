"""Write constraints.txt from the running environment: the exact version of every installed distribution except
torch (each machine brings its own build), this package and the installers.

Run by ``LATEST=1 bash scripts/test.sh`` after the suite passed on the newest releases; by hand:
``python scripts/refresh_constraints.py constraints.txt``. Direct dependencies (pyproject.toml) come first.
"""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

EXCLUDED = {"torch", "torch-npu", "diffusers-npu", "pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    """PEP 503 normalised name: ``PyYAML`` -> ``pyyaml``, ``typing_extensions`` -> ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_dependencies() -> set[str]:
    """Names in this package's requirements (all extras), from its installed metadata."""
    requires = metadata.requires("diffusers-npu") or []
    return {canonical(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]) for r in requires}


def constraints_text() -> str:
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    pins = {name: version for name, version in installed.items() if name not in EXCLUDED}
    direct = direct_dependencies() & pins.keys()
    torch = installed.get("torch", "not installed")
    lines = [
        "# The stack the whole test suite last passed with (scripts/_env.sh installs with `-c constraints.txt`).",
        "# Written by scripts/refresh_constraints.py; move it with `LATEST=1 bash scripts/test.sh`.",
        f"# Python {platform.python_version()}, {sys.platform}; tested with torch {torch} (not pinned here).",
        "# direct dependencies",
        *(f"{name}=={pins[name]}" for name in sorted(direct)),
        "# their dependencies",
        *(f"{name}=={pins[name]}" for name in sorted(pins.keys() - direct)),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/refresh_constraints.py OUT_FILE", file=sys.stderr)
        return 2
    Path(argv[0]).write_text(constraints_text())
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
