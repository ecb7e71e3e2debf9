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


def pipeline_family(class_name: str) -> str:
    """The model family of a diffusers pipeline class name: ``sdxl``, ``sd3``, ``sd`` (1.x/2.x), ``flux``, or
    the name itself. Img2img, inpainting and ControlNet variants of a family belong to it."""
    if class_name.startswith("StableDiffusion3"):
        return "sd3"
    if class_name.startswith("StableDiffusionXL"):
        return "sdxl"
    if class_name.startswith("StableDiffusion"):
        return "sd"
    if class_name.startswith("Flux"):
        return "flux"
    return class_name


def model_class(path: str, flag: str) -> str | None:
    """The ``_class_name`` of a local model folder's ``model_index.json`` (None for a hub id)."""
    import json

    index = Path(path) / "model_index.json"
    if not index.is_file():
        return None
    try:
        return json.loads(index.read_text()).get("_class_name", "")
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise UserError(f"{flag} {path}: model_index.json is not valid JSON; re-save the model") from None


def check_family(path: str, pipeline_cls_name: str, flag: str, task: str = "this script trains") -> None:
    """One line if the local model folder ``path`` is not of ``pipeline_cls_name``'s family (``pipeline_family``),
    e.g. an SDXL folder given to the SD script. Hub ids are checked by diffusers when they load."""
    found = model_class(path, flag)
    if found is not None and pipeline_family(found) != pipeline_family(pipeline_cls_name):
        raise UserError(f"{flag} {path} is a {found} model; {task} {pipeline_cls_name} (use the matching script)")
