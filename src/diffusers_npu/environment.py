"""What a bug report needs about this installation, and the version combinations known not to work.

``diffusers-npu env`` prints the report; ``--check`` also exits 1 when a problem is found. Training and inference
entry points call :func:`check_environment` at start: it reads installed package metadata only (no device work,
no imports), refuses a known-incompatible combination with one line naming the fix, and warns about a package
outside this package's declared range.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from .errors import UserError

# The packages a bug report lists, in the order people read them.
PACKAGES = ("torch", "torch-npu", "diffusers", "transformers", "accelerate", "peft", "datasets", "safetensors",
            "huggingface-hub", "tokenizers", "numpy", "pillow", "bitsandbytes", "diffusers-npu")  # fmt: skip
SKIP_ENV = "DIFFUSERS_NPU_SKIP_ENV_CHECK"

Versions = Mapping[str, "Version | None"]


def installed_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, Version | None]:
    """Installed version of each distribution in ``names`` from its metadata (None when absent); imports nothing."""
    found: dict[str, Version | None] = {}
    for name in names:
        try:
            found[name] = Version(metadata.version(name))
        except (metadata.PackageNotFoundError, InvalidVersion):
            found[name] = None
    return found


@dataclass(frozen=True)
class Incompatibility:
    """A combination that fails at run time: ``applies(versions)`` says whether it is installed here."""

    name: str
    applies: Callable[[Versions], bool]
    message: Callable[[Versions], str]


def _peft_too_old_for_transformers(v: Versions) -> bool:
    # transformers 5.24 raises "The version of PEFT you are using is not compatible, please use a version >=
    # 0.22.0" when an adapter is loaded into a text encoder (transformers/integrations/peft.py MIN_PEFT_VERSION).
    t, p = v.get("transformers"), v.get("peft")
    return t is not None and p is not None and t >= Version("5.24") and p < Version("0.22")


def _torch_npu_mismatch(v: Versions) -> bool:
    # torch_npu X.Y.Z[.postN] is built for torch X.Y.Z only (Ascend/pytorch README, version table).
    t, n = v.get("torch"), v.get("torch-npu")
    return t is not None and n is not None and t.release[:3] != n.release[:3]


def _base(v: Version | None) -> str:
    return ".".join(map(str, v.release[:3])) if v is not None else "?"


INCOMPATIBLE: tuple[Incompatibility, ...] = (
    Incompatibility(
        "transformers/peft",
        _peft_too_old_for_transformers,
        lambda v: (
            f"transformers {v['transformers']} needs peft>=0.22 for text-encoder LoRA but peft {v['peft']} is "
            "installed: pip install 'transformers<5.24' (or a peft>=0.22)"
        ),
    ),
    Incompatibility(
        "torch/torch_npu",
        _torch_npu_mismatch,
        lambda v: (
            f"torch-npu {v['torch-npu']} is built for torch {_base(v['torch-npu'])}, not the installed torch "
            f"{v['torch']}: pip install torch-npu=={_base(v['torch'])}"
        ),
    ),
)


def incompatibilities(versions: Versions | None = None) -> list[str]:
    """One line per known-incompatible combination installed here (``versions`` default: the installed ones)."""
    versions = installed_versions() if versions is None else versions
    return [rule.message(versions) for rule in INCOMPATIBLE if rule.applies(versions)]


def out_of_range(requires: list[str] | None = None, versions: Versions | None = None) -> list[str]:
    """One line per installed requirement of this package (extras excluded) outside its declared range.

    ``requires`` defaults to this package's installed metadata; nothing is checked when it is not installed.
    """
    if requires is None:
        try:
            requires = metadata.requires("diffusers-npu") or []
        except metadata.PackageNotFoundError:
            return []
    lines = []
    for req in map(Requirement, requires):
        if req.marker is not None and "extra" in str(req.marker):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        have = versions.get(name) if versions is not None else installed_versions((name,))[name]
        if have is not None and not req.specifier.contains(have, prereleases=True):
            lines.append(
                f"{name} {have} is outside the tested range {req.specifier}: pip install '{name}{req.specifier}'"
            )
    return lines


def check_environment() -> None:
    """Called by every training and inference entry point before it loads anything.

    Raises ``UserError`` (one line, the fix included) for a known-incompatible combination, and prints a
    ``warning:`` line per package outside the declared range. ``$DIFFUSERS_NPU_SKIP_ENV_CHECK=1`` skips both.
    """
    if os.environ.get(SKIP_ENV) == "1":
        return
    problems = incompatibilities()
    if problems:
        raise UserError(f"{problems[0]} (or set {SKIP_ENV}=1 to run anyway)")
    for line in out_of_range():
        print(f"warning: {line}", file=sys.stderr)


# ---- the report ----------------------------------------------------------------------------------------------


def cann_version() -> str | None:
    """The CANN toolkit version from its install record (``version=`` in ascend_toolkit_install.info), if any."""
    home = os.environ.get("ASCEND_TOOLKIT_HOME") or "/usr/local/Ascend/ascend-toolkit/latest"
    for info in sorted(Path(home).glob("*/ascend_toolkit_install.info")) if Path(home).is_dir() else ():
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("version="):
                return line.partition("=")[2].strip()
    return None


def _runnable(kind: str) -> dict[str, list[str]]:
    """Attention kernels and optimizers whose device constraint admits ``kind`` and whose package imports."""
    import importlib.util

    from . import attention, optim

    def importable(spec: optim.OptimizerSpec) -> bool:
        module = spec.source.split(":")[0]
        if module == optim.NPU_OPS:
            return importlib.util.find_spec("torch_npu") is not None
        return importlib.util.find_spec(module.split(".")[0]) is not None

    return {
        "attention": [name for name, spec in attention.KERNELS.items() if kind in spec.devices],
        "optimizers": [name for name, spec in optim.OPTIMIZERS.items() if kind in spec.devices and importable(spec)],
    }


def report() -> dict[str, object]:
    """Everything ``diffusers-npu env`` prints: versions, torch build, devices, what can run, problems."""
    import torch

    from . import devices

    kind = devices.detect_kind()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: str(v) if v else None for name, v in installed_versions().items()},
        "torch_build": {"version": torch.__version__, "cuda": torch.version.cuda, "git": torch.version.git_version},
        "cann": cann_version(),
        "device": {"kind": kind, "count": devices.device_count(kind), "name": devices.get_device(kind).name()},
        "runnable_here": _runnable(kind),
        "problems": incompatibilities() + out_of_range(),
    }


def format_report(rep: Mapping[str, object]) -> str:
    """The report as ``key: value`` lines, for pasting into an issue."""
    lines = [f"python: {rep['python']} ({rep['platform']})"]
    lines += [f"{name}: {version or 'not installed'}" for name, version in rep["packages"].items()]
    build = rep["torch_build"]
    lines.append(f"torch build: {build['version']} cuda={build['cuda']} git={build['git']}")
    lines.append(f"CANN: {rep['cann'] or 'not found'}")
    dev = rep["device"]
    lines.append(f"device: {dev['kind']} x{dev['count']} ({dev['name']})")
    lines += [f"{what} runnable here: {', '.join(names)}" for what, names in rep["runnable_here"].items()]
    lines += [f"problem: {p}" for p in rep["problems"]] or ["problems: none known"]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser, _argv: list[str]) -> None:
    parser.add_argument("--check", action="store_true", help="exit 1 when a problem is found")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rep = report()
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 1 if args.check and rep["problems"] else 0
