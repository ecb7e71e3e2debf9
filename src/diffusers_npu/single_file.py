"""Single-file models in: an A1111 / ComfyUI checkpoint (``.safetensors``, or a MindONE ``.ckpt``) wherever a model
folder is taken (``--pretrained_model_name_or_path`` for training, ``--model_path`` for ``test_infer/``).

The file is converted once into a diffusers folder among the run's outputs (``OUTPUT_DIR/single_file_<flag>``,
reused while the file, its size and time and the config flags are the same), which every loading path then reads
as any other model folder. The configs come from ``--single_file_config`` (a diffusers folder of the same
architecture, ``tiny:<kind>`` or a hub id) or ``--original_config`` (the original YAML); nothing is downloaded
when the hub is offline.

- SDXL (``conditioner.embedders.*`` keys): convert/sdxl_single_file.py, diffusers' own per-component converters
  driven by the config folder, which also reads small and custom SDXL models (``from_single_file`` recognises
  SDXL only by its real depth).
- Other families: the pipeline's stock ``from_single_file(file, config=..., original_config=...)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .errors import UserError, first_line
from .model_paths import _hub_offline, resolve_model_path

SUFFIXES = (".safetensors", ".ckpt")
SDXL_MARKER = "conditioner.embedders."  # sgm's text-conditioner prefix: SDXL base and refiner
SDXL_DEFAULT_CONFIG = "stabilityai/stable-diffusion-xl-base-1.0"
KEY_FILE = "single_file.json"


def is_single_file(name: str | None) -> bool:
    return bool(name) and Path(name).suffix in SUFFIXES and Path(name).is_file()


def _keys(path: Path) -> list[str]:
    if path.suffix == ".ckpt":
        from .convert.sdxl_single_file import load_single_file

        return list(load_single_file(path))
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({err}); pass a whole single-file model") from None


def resolve(name: str, flag: str, pipeline_cls, config: str | None, original_config: str | None, out: Path) -> str:
    """``resolve_model_path(name)``, or for a single-file model the diffusers folder made from it under ``out``.

    ``pipeline_cls``: the diffusers pipeline class the caller loads (a family check), or None (inference: any).
    """
    if not is_single_file(name):
        return resolve_model_path(name, flag)
    path = Path(name).resolve()
    stat = path.stat()
    key = json.dumps([str(path), stat.st_size, stat.st_mtime_ns, config, original_config])
    folder = out / f"single_file_{flag.lstrip('-')}"
    if (folder / KEY_FILE).is_file() and (folder / KEY_FILE).read_text() == key:
        return str(folder)
    sdxl = any(k.startswith(SDXL_MARKER) for k in _keys(path))
    wanted = getattr(pipeline_cls, "__name__", None)
    if wanted and sdxl != ("XL" in wanted):
        family = "an SDXL" if sdxl else "a non-SDXL"
        raise UserError(f"{flag} {name} is {family} single-file model; this script trains {wanted}")
    out.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{hashlib.sha1(key.encode()).hexdigest()[:8]}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (_sdxl if sdxl else _stock)(path, flag, pipeline_cls, config, original_config, tmp)
        (tmp / KEY_FILE).write_text(key)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def _no_config(flag: str, name: Path) -> UserError:
    return UserError(f"{flag} {name} is a single file and the hub is offline: pass --single_file_config DIR (a "
                     "diffusers folder of the same architecture, or tiny:<kind>) or --original_config YAML")  # fmt: skip


def _sdxl(path: Path, flag: str, _cls, config: str | None, original_config: str | None, tmp: Path) -> None:
    from .convert.sdxl_single_file import (
        load_single_file,
        local_model_dir,
        save_diffusers_folder,
        single_file_to_diffusers,
    )

    if config is None and _hub_offline():
        raise _no_config(flag, path)
    if original_config is not None and config is None:
        raise UserError(
            "--original_config is not read for SDXL files; pass --single_file_config DIR of the same architecture"
        )
    config_dir = local_model_dir(config or SDXL_DEFAULT_CONFIG, weights=False, flag="--single_file_config")
    components, _ = single_file_to_diffusers(load_single_file(path), config_dir)
    save_diffusers_folder(components, config_dir, tmp)


def _stock(path: Path, flag: str, pipeline_cls, config: str | None, original_config: str | None, tmp: Path) -> None:
    import diffusers

    if pipeline_cls is None:
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

        kind = infer_diffusers_model_type(load_single_file_checkpoint(str(path)))
        pipeline_cls = diffusers.FluxPipeline if kind.startswith("flux") else diffusers.StableDiffusionPipeline
    if config is None and original_config is None and _hub_offline():
        raise _no_config(flag, path)
    extra = {"config": resolve_model_path(config, "--single_file_config")} if config else {}
    if original_config:
        extra["original_config"] = original_config
    try:
        pipe = pipeline_cls.from_single_file(str(path), local_files_only=_hub_offline(), **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"{flag} {path} does not load as {pipeline_cls.__name__} ({first_line(err)}); "
                        "check --single_file_config / --original_config") from None  # fmt: skip
    pipe.save_pretrained(str(tmp), safe_serialization=True)
