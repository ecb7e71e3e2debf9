"""Output locations checked before any work: a file where a folder is wanted (or the reverse), an output that
is one of the inputs, a location that cannot be written. One helper per kind of output, used by every entry point."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(path: Path, flag: str) -> None:
    anchor = _nearest_existing(path)
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {anchor} is not writable; choose a folder you can write to")


def output_dir(path: str | Path, flag: str = "--output_dir") -> Path:
    """A folder the run will write into (it may exist): not a file, and writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; pass a folder (it is created if missing)")
    _writable(path, flag)
    return path


def output_file(path: str | Path, inputs: list[Path], flag: str = "OUT") -> Path:
    """A file about to be written: not an existing folder, not one of ``inputs``, in a writable place."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; name the file to write")
    for source in inputs:
        if source.exists() and path.exists() and os.path.samefile(source, path):
            raise UserError(f"{flag} {path} is also the input; name another file, the input is kept")
    _writable(path, flag)
    return path
