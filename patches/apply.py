"""Check, apply or revert the NPU patch for legacy accelerate (< 0.21).

accelerate gained native Ascend NPU support in 0.21 (commit c33adecc, #1676). The Ascend ModelZoo diffusers
port pins accelerate 0.20.3 and hand-edits it: `GradScalerKwargs` gains `dynamic`, and the fp16 GradScaler comes
from `torch.npu.amp.GradScaler`. This script applies exactly that edit, stored as a unified diff next to it, with
a small pure-Python applier: context must match byte for byte at the stated lines, nothing is fuzzed, every file
is replaced atomically (temp file in the same directory + os.replace), and `--revert` restores the originals
byte for byte. On accelerate >= 0.21 every mode says "no patch needed" and exits 0 without touching anything.

Exit status: 0 done / patched / no patch needed; 1 `--check` found an unpatched legacy install; 2 refused.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PATCH_DIR = Path(__file__).resolve().parent
PATCHES = {"0.20.3": PATCH_DIR / "accelerate-0.20.3-npu.diff"}  # accelerate version -> diff
NATIVE_SINCE = (0, 21)


class PatchError(Exception):
    """A refusal: unknown version, context mismatch, unwritable target. One line, exit status 2."""


@dataclass
class Hunk:
    old_start: int  # 1-based, as in the "@@ -l,s +l,s @@" header
    new_start: int
    old: list[str]  # lines with their "\n"
    new: list[str]


def parse_diff(text: str) -> dict[str, list[Hunk]]:
    """Parse a unified diff into {path relative to the target dir: hunks}; lines before the first '---' are notes."""
    files: dict[str, list[Hunk]] = {}
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        if lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            hunks = files.setdefault(lines[i + 1][4:].strip().split("\t")[0].removeprefix("b/"), [])
            i += 2
        elif lines[i].startswith("@@ "):
            m = re.match(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", lines[i])
            n_old, n_new = int(m[2] or 1), int(m[4] or 1)
            hunk = Hunk(int(m[1]), int(m[3]), [], [])
            i += 1
            while len(hunk.old) < n_old or len(hunk.new) < n_new:
                tag, body = (" ", "\n") if lines[i] == "\n" else (lines[i][0], lines[i][1:])  # blank context
                if tag not in " -+":
                    raise PatchError(f"unsupported diff line {i + 1}: {lines[i]!r}")
                if tag in " -":
                    hunk.old.append(body)
                if tag in " +":
                    hunk.new.append(body)
                i += 1
            hunks.append(hunk)
        else:
            i += 1
    return files


def patch_lines(lines: list[str], hunks: list[Hunk], reverse: bool) -> list[str] | None:
    """Apply hunks (or undo them) to a file's lines; None if any hunk's context does not match exactly."""
    out, pos = [], 0
    for h in hunks:
        start, find, repl = (h.new_start, h.new, h.old) if reverse else (h.old_start, h.old, h.new)
        at = start - 1 if find else start  # a pure insertion at line 0 has no lines to find
        if lines[at : at + len(find)] != find:
            return None
        out += lines[pos:at] + repl
        pos = at + len(find)
    return out + lines[pos:]


def read_version(pkg: Path) -> str:
    """`__version__` from accelerate/__init__.py, read as text (importing would run the package)."""
    m = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", (pkg / "__init__.py").read_text(encoding="utf-8"), re.M)
    if not m:
        raise PatchError(f"no __version__ in {pkg / '__init__.py'}")
    return m[1]


def version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric parts: "0.21.0.dev0" -> (0, 21, 0)."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def find_target(target: str | None) -> Path:
    """The directory that contains the accelerate/ package: --target, else the installed one (not imported)."""
    if target is None:
        spec = importlib.util.find_spec("accelerate")
        if spec is None or not spec.submodule_search_locations:
            raise PatchError("accelerate is not installed; pass --target DIR")
        return Path(list(spec.submodule_search_locations)[0]).parent
    root = Path(target)
    if not (root / "accelerate" / "__init__.py").is_file():
        raise PatchError(f"{root} has no accelerate/__init__.py; --target is the directory that contains accelerate/")
    return root


def plan(root: Path, hunks_by_file: dict[str, list[Hunk]], reverse: bool) -> dict[Path, str] | None:
    """New contents for every file, or None if any file does not match the diff in that direction."""
    result = {}
    for rel, hunks in hunks_by_file.items():
        path = root / rel
        if not path.is_file():
            return None
        new = patch_lines(path.read_text(encoding="utf-8").splitlines(keepends=True), hunks, reverse)
        if new is None:
            return None
        result[path] = "".join(new)
    return result


def write_atomically(contents: dict[Path, str]) -> None:
    """Write every file to a temp file beside it first, then os.replace them all; keeps file modes."""
    for path in contents:
        if not os.access(path.parent, os.W_OK) or not os.access(path, os.W_OK):
            raise PatchError(f"{path} is not writable (run as its owner, or copy accelerate and use --target)")
    staged = []
    try:
        for path, text in contents.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            shutil.copymode(path, tmp)
            staged.append((tmp, path))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def run(mode: str, target: str | None) -> int:
    """Do one mode on one target; returns the exit status, raises PatchError to refuse."""
    root = find_target(target)
    version = read_version(root / "accelerate")
    where = f"accelerate {version} in {root}"
    if version_tuple(version) >= NATIVE_SINCE:
        print(f"{where}: no patch needed (native NPU support since accelerate 0.21)")
        return 0
    if version not in PATCHES:
        known = ", ".join(PATCHES)
        raise PatchError(f"{where}: no patch for this version (known: {known}); upgrade to accelerate >= 0.21")
    hunks = parse_diff(PATCHES[version].read_text(encoding="utf-8"))
    to_patch, to_revert = plan(root, hunks, reverse=False), plan(root, hunks, reverse=True)
    if to_patch is None and to_revert is None:
        raise PatchError(f"{where}: files do not match {PATCHES[version].name} (locally modified?); nothing written")
    patched = to_patch is None
    if mode == "check":
        print(f"{where}: {'patched' if patched else 'not patched'}")
        return 0 if patched else 1
    if mode == "apply":
        if not patched:
            write_atomically(to_patch)
        print(f"{where}: {'already patched' if patched else 'patched'}")
    else:
        if patched:
            write_atomically(to_revert)
        print(f"{where}: {'reverted' if patched else 'not patched, nothing to revert'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_mutually_exclusive_group(required=True)
    helps = {
        "check": "report: patched / not patched (exit 1) / no patch needed",
        "apply": "apply the patch (idempotent)",
        "revert": "restore the original files byte for byte",
    }
    for mode, text in helps.items():
        modes.add_argument(f"--{mode}", dest="mode", action="store_const", const=mode, help=text)
    parser.add_argument(
        "--target",
        metavar="DIR",
        help="directory that CONTAINS the accelerate/ package (e.g. site-packages or an unzipped wheel); "
        "default: the installed accelerate, located with importlib.util.find_spec without importing it",
    )
    args = parser.parse_args(argv)
    try:
        return run(args.mode, args.target)
    except (PatchError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:  # a damaged or foreign accelerate source file
        print(f"error: a file under the accelerate package is not UTF-8 text ({e.reason}); reinstall accelerate",
              file=sys.stderr)  # fmt: skip
        return 2


if __name__ == "__main__":
    sys.exit(main())
