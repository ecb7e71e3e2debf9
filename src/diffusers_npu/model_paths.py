"""Where a model comes from: ``tiny:<kind>`` (the built-in offline default), a local directory, or the hub."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

TINY_PREFIX = "tiny:"


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_model_path(
    name: str, flag: str = "--pretrained_model_name_or_path", marker: str = "model_index.json"
) -> str:
    """Return a loadable path or hub id for ``name``; a one-line UserError when it cannot be loaded.

    ``tiny:sd15`` and friends build (once, cached) the seeded tiny model of that kind. A local path must be
    a diffusers folder holding ``marker`` (a pipeline's ``model_index.json``, or ``config.json`` for a single
    model such as a separate VAE). A hub id is passed through unless the hub is offline.
    """
    if name.startswith(TINY_PREFIX):
        from . import tiny

        return str(tiny.tiny_model_path(name[len(TINY_PREFIX) :]))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / marker).is_file():
            raise UserError(
                f"{flag} {name} is not a diffusers model directory (no {marker}); pass a folder saved with save_pretrained"
            )
        return str(path)
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id or _hub_offline():
        raise UserError(
            f"{flag} {name} does not exist locally{' and the hub is offline' if looks_like_hub_id else ''}; pass a local diffusers folder or tiny:sd15"
        )
    return name
