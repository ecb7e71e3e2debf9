"""SDXL: diffusers folder <-> the original single-file layout (Stability's sgm / ``sd_xl_base_1.0.safetensors``).

diffusers -> single file is our own mapping. It is the inverse of what diffusers' ``single_file_utils`` reads, and
follows diffusers' ``scripts/convert_diffusers_to_original_sdxl.py`` (not in the wheel), generalised: the UNet
block numbering is derived from the UNet config instead of hard-coded for SDXL base. Prefixes are
``model.diffusion_model.`` (UNet), ``first_stage_model.`` (VAE), ``conditioner.embedders.0.transformer.`` (CLIP-L,
names unchanged) and ``conditioner.embedders.1.model.`` (OpenCLIP bigG: renamed, q/k/v fused into ``in_proj``,
``text_projection`` stored transposed; MindONE's faq Q1 notes the same transpose).

single file -> diffusers reuses diffusers' own converters (``diffusers.loaders.single_file_utils``:
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint``), driven by the component configs of a diffusers folder. ``from_single_file`` is
not used: it detects SDXL by a 10th OpenCLIP layer, so it cannot read small or custom models. Keys of the single
file that no diffusers weight came from (``logit_scale``, ``position_ids``, EMA copies, ...) are listed.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from diffusers.loaders import single_file_utils as sfu

from ..errors import UserError
from . import existing_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "conditioner.embedders.{i}.transformer."
OPEN_CLIP_PREFIX = "conditioner.embedders.{i}.model."
# diffusers folder layout: component -> weights file name.
WEIGHT_FILES = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
    "text_encoder_2": "model.safetensors",
}
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP = [("text_model.encoder.layers.", "transformer.resblocks."), ("layer_norm1", "ln_1"),
              ("layer_norm2", "ln_2"), (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj."),
              (".self_attn.", ".attn."), ("text_model.final_layer_norm.", "ln_final.")]  # fmt: skip


# ---- UNet ----------------------------------------------------------------------------------------------------


def _has_attention(block_type: str) -> bool:
    return "CrossAttn" in block_type


def unet_block_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(diffusers prefix, SGM prefix, kind) of every UNet block, numbered as sgm's ``UNetModel`` numbers them.

    SGM counts ``input_blocks`` from 1 (0 is ``conv_in``): ``layers_per_block`` (ResBlock[, SpatialTransformer])
    per level, then a downsampler except after the last level; ``middle_block`` = res, attention, res;
    ``output_blocks``: ``layers_per_block + 1`` per level, the upsampler inside the last one. ``kind`` is
    "resnet", "attention" or "sampler". Raises ``UserError`` for layouts SGM cannot express.
    """
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise UserError(f"layers_per_block={lpb!r} varies per block; the SGM layout needs one integer")
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise UserError(f"mid_block_type={config['mid_block_type']!r}: only UNetMidBlock2DCrossAttn maps to SGM")
    down, up = config["down_block_types"], config["up_block_types"]
    out: list[tuple[str, str, str]] = []
    idx = 1
    for i, kind in enumerate(down):
        for j in range(lpb):
            out.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{idx}.0.", "resnet"))
            if _has_attention(kind):
                out.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{idx}.1.", "attention"))
            idx += 1
        if i < len(down) - 1:
            out.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{idx}.0.op.", "sampler"))
            idx += 1
    out += [("mid_block.resnets.0.", "middle_block.0.", "resnet"),
            ("mid_block.attentions.0.", "middle_block.1.", "attention"),
            ("mid_block.resnets.1.", "middle_block.2.", "resnet")]  # fmt: skip
    idx = 0
    for i, kind in enumerate(up):
        for j in range(lpb + 1):
            out.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{idx}.0.", "resnet"))
            if _has_attention(kind):
                out.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{idx}.1.", "attention"))
            if j == lpb and i < len(up) - 1:
                slot = 2 if _has_attention(kind) else 1
                out.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{idx}.{slot}.conv.", "sampler"))
            idx += 1
    return out


def _unet_top_level(config: Mapping[str, Any]) -> dict[str, str]:
    """diffusers -> SGM names outside the blocks; diffusers' own table, so both directions agree."""
    table = dict(sfu.DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"])
    if config.get("addition_embed_type") == "text_time":
        table.update(sfu.DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"])
    if config.get("class_embed_type") in ("timestep", "projection"):
        table.update(sfu.DIFFUSERS_TO_LDM_MAPPING["unet"]["class_embed_type"])
    return table


def unet_to_sgm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers UNet weights -> SGM names (without ``model.diffusion_model.``). Unknown names raise UserError."""
    top = _unet_top_level(config)
    blocks = sorted(unet_block_prefixes(config), key=lambda b: -len(b[0]))
    out, unknown = {}, []
    for key, value in state_dict.items():
        if key in top:
            out[top[key]] = value
            continue
        block = next((b for b in blocks if key.startswith(b[0])), None)
        if block is None:
            unknown.append(key)
            continue
        rest = key[len(block[0]) :]
        if block[2] == "resnet":
            head, _, tail = rest.partition(".")
            rest = f"{_RESNET.get(head, head)}.{tail}"
        out[block[1] + rest] = value
    if unknown:
        raise UserError(f"{len(unknown)} UNet weights have no SGM name: {', '.join(unknown[:20])}")
    return out


# ---- VAE and text encoders -----------------------------------------------------------------------------------


def _vae_name(key: str, n_up: int) -> str:
    m = re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        part, way, i, what, j, rest = m.groups()
        level = int(i) if way == "down" else n_up - 1 - int(i)  # SGM numbers decoder levels bottom-up
        if what == "resnets":
            return f"{part}.{way}.{level}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        return f"{part}.{way}.{level}.{what.removesuffix('rs')}.{rest}"  # downsamplers.0.conv -> downsample.conv
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        part, what, j, rest = m.groups()
        if what == "resnets":
            return f"{part}.mid.block_{int(j) + 1}.{rest}"
        module, _, param = rest.rpartition(".")
        return f"{part}.mid.attn_1.{_VAE_ATTN.get(module, module)}.{param}"
    return key


def vae_to_sgm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL weights -> SGM names (without ``first_stage_model.``).

    The mid-block attention projections are 1x1 convolutions in SGM: ``(out, in)`` becomes ``(out, in, 1, 1)``.
    """
    top = {k: v for k, v in sfu.DIFFUSERS_TO_LDM_MAPPING["vae"].items()}
    n_up = len(config["up_block_types"])
    out = {}
    for key, value in state_dict.items():
        name = top.get(key) or _vae_name(key, n_up)
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[name] = value
    return out


def with_text_model_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP weights with the ``text_model.`` prefix the single file uses. transformers >= 5.6 flattened
    ``CLIPTextModel`` (its keys lost the prefix); ``text_projection`` sits outside ``text_model`` in both.
    """
    return {k if k.startswith("text_model.") or k.startswith("text_projection") else "text_model." + k: v
            for k, v in state_dict.items()}  # fmt: skip


def _align_text_model_prefix(sd: dict[str, torch.Tensor], expected: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename converted CLIP keys to the installed transformers' names (with or without ``text_model.``)."""
    out = {}
    for key, value in sd.items():
        candidates = (key, key.removeprefix("text_model."), "text_model." + key)
        out[next((c for c in candidates if c in expected), key)] = value
    return out


def open_clip_to_sgm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``CLIPTextModelWithProjection`` -> OpenCLIP names: q, k, v fused in that order into
    ``attn.in_proj_weight`` / ``in_proj_bias``, ``text_projection`` transposed (diffusers' script L202-265, L334-338).
    """
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in with_text_model_prefix(state_dict).items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        if key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
            continue
        if key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
            continue
        name = key
        for old, new in _OPEN_CLIP:
            name = name.replace(old, new)
        m = re.match(r"(.*\.attn)\.([qkv])_proj\.(weight|bias)$", name)
        if m:
            fused.setdefault(f"{m[1]}.in_proj_{m[3]}", {})[m[2]] = value
        else:
            out[name] = value
    for name, parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            raise UserError(f"{name}: text_encoder_2 has {sorted(parts)} of q/k/v; all three are needed")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# ---- whole folders -------------------------------------------------------------------------------------------


def _model_index(model_dir: Path) -> dict[str, tuple[str, str]]:
    """The weight-carrying components this folder has: name -> (library, class) from model_index.json."""
    import json

    index_file = model_dir / "model_index.json"
    if not index_file.is_file():
        raise UserError(f"{model_dir} has no model_index.json; pass a diffusers SDXL folder")
    index = json.loads(index_file.read_text())
    comps = {k: tuple(v) for k, v in index.items() if k in WEIGHT_FILES and isinstance(v, list) and v[0]}
    if "unet" not in comps or "vae" not in comps:
        raise UserError(f"{model_dir} has no unet or vae; pass a diffusers SDXL folder")
    return comps


def _open_clip_slot(comps: Mapping[str, Any]) -> int:
    """OpenCLIP is embedder 1 in SDXL base and embedder 0 in the refiner, which has no CLIP-L."""
    return 1 if "text_encoder" in comps else 0


def _config(model_dir: Path, comp: str) -> dict[str, Any]:
    import json

    return json.loads((model_dir / comp / "config.json").read_text())


def _load_weights(model_dir: Path, comp: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = model_dir / comp / WEIGHT_FILES[comp]
    if not path.is_file():
        raise UserError(f"{path} is missing; only safetensors diffusers folders are read (save_pretrained default)")
    return load_file(path)


def diffusers_to_single_file(model_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a diffusers SDXL (base or refiner) folder and return its weights under single-file names."""
    model_dir = Path(model_dir)
    comps = _model_index(model_dir)
    out: dict[str, torch.Tensor] = {}
    for comp in comps:
        sd = _load_weights(model_dir, comp)
        if comp == "unet":
            named = {UNET_PREFIX + k: v for k, v in unet_to_sgm(sd, _config(model_dir, comp)).items()}
        elif comp == "vae":
            named = {VAE_PREFIX + k: v for k, v in vae_to_sgm(sd, _config(model_dir, comp)).items()}
        elif comp == "text_encoder":
            named = {CLIP_PREFIX.format(i=0) + k: v for k, v in with_text_model_prefix(sd).items()}
        else:
            prefix = OPEN_CLIP_PREFIX.format(i=_open_clip_slot(comps))
            named = {prefix + k: v for k, v in open_clip_to_sgm(sd).items()}
        out.update(named)
    return out


def _meta_state(model_dir: Path, comp: str, library: str, class_name: str) -> dict[str, torch.Size]:
    """Parameter names and shapes of one component, built from its config on the meta device (no memory)."""
    import importlib

    cls = getattr(importlib.import_module(library), class_name)
    with torch.device("meta"):
        if library == "diffusers":
            model = cls.from_config(cls.load_config(model_dir / comp))
        else:
            model = cls(cls.config_class.from_pretrained(model_dir / comp))
    return {k: v.shape for k, v in model.state_dict().items()}


def _from_single(state: Mapping[str, torch.Tensor], comp: str, config: dict, slot: int) -> dict[str, torch.Tensor]:
    """One component's diffusers weights, by diffusers' own single-file converters."""
    try:
        if comp == "unet":
            return sfu.convert_ldm_unet_checkpoint(state, config)
        if comp == "vae":
            return sfu.convert_ldm_vae_checkpoint(state, config)
        if comp == "text_encoder":
            return sfu.convert_ldm_clip_checkpoint(state)
        stand_in = SimpleNamespace(config=SimpleNamespace(hidden_size=config["hidden_size"]))
        return sfu.convert_open_clip_checkpoint(stand_in, state, prefix=OPEN_CLIP_PREFIX.format(i=slot))
    except KeyError as err:
        raise UserError(f"the single file lacks {err} needed for the {comp}; is it an SDXL checkpoint?") from None


def single_file_to_diffusers(
    state: Mapping[str, torch.Tensor], model_dir: str | os.PathLike[str]
) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Convert single-file SDXL weights to diffusers component state dicts, checked against ``model_dir``'s configs.

    Returns (component -> state dict, single-file keys that no diffusers weight came from, sorted). Raises
    ``UserError`` listing weights a component needs but the file lacks, or whose shapes differ from the config.
    """
    model_dir = Path(model_dir)
    comps = _model_index(model_dir)
    slot = _open_clip_slot(comps)
    out, problems = {}, []
    for comp, (library, class_name) in comps.items():
        expected = _meta_state(model_dir, comp, library, class_name)
        converted = _align_text_model_prefix(_from_single(state, comp, _config(model_dir, comp), slot), expected)
        kept = {k: v.contiguous() for k, v in converted.items() if k in expected and v is not None}
        problems += [f"{comp}.{k} (missing)" for k in expected if k not in kept]
        problems += [f"{comp}.{k} {list(v.shape)} != {list(expected[k])}" for k, v in kept.items()
                     if v.shape != expected[k]]  # fmt: skip
        out[comp] = kept
    if problems:
        raise UserError(f"{len(problems)} weights do not fit {model_dir}: {'; '.join(problems[:20])}")
    consumed = set(_rename_back(out, model_dir))
    return out, sorted(k for k in state if k not in consumed)


def _rename_back(components: Mapping[str, Mapping[str, torch.Tensor]], model_dir: Path) -> dict[str, Any]:
    """Single-file names of ``components`` (the forward mapping), to find what the reverse left unused."""
    comps = _model_index(model_dir)
    names: dict[str, Any] = {}
    for comp, sd in components.items():
        if comp == "unet":
            names.update({UNET_PREFIX + k: 0 for k in unet_to_sgm(sd, _config(model_dir, comp))})
        elif comp == "vae":
            names.update({VAE_PREFIX + k: 0 for k in vae_to_sgm(sd, _config(model_dir, comp))})
        elif comp == "text_encoder":
            names.update({CLIP_PREFIX.format(i=0) + k: 0 for k in with_text_model_prefix(sd)})
        else:
            prefix = OPEN_CLIP_PREFIX.format(i=_open_clip_slot(comps))
            names.update({prefix + k: 0 for k in open_clip_to_sgm(sd)})
    return names


# ---- files and CLI -------------------------------------------------------------------------------------------


def local_model_dir(name: str, weights: bool, flag: str = "MODEL") -> Path:
    """A local folder for ``name`` (``tiny:sdxl``, a folder, or a hub id: configs only unless ``weights``)."""
    from ..model_paths import resolve_model_path

    resolved = resolve_model_path(name, flag=flag)
    if Path(resolved).is_dir():
        return Path(resolved)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt"] + [f"{c}/{f}" for c, f in WEIGHT_FILES.items()] * weights
    return Path(snapshot_download(resolved, allow_patterns=patterns))


def _sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def save_single_file(state: Mapping[str, torch.Tensor], out: Path, half: bool = False) -> Path:
    """Write a single-file safetensors (fp16 with ``half``), atomically."""
    from safetensors.torch import save_file

    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out)
    try:
        save_file(dict(state), tmp, metadata={"format": "pt"})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def save_diffusers_folder(components: Mapping[str, Mapping[str, torch.Tensor]], config_dir: Path, out: Path) -> Path:
    """Copy ``config_dir`` without its weights, write ``components`` in, rename to ``out`` (new or empty)."""
    from safetensors.torch import save_file

    from ..tiny import MARKER

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; choose a new output folder")
    weights = ("*.safetensors", "*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.onnx*", ".*", MARKER)
    tmp = _sibling(out)
    try:
        shutil.copytree(config_dir, tmp, ignore=shutil.ignore_patterns(*weights))
        for comp, sd in components.items():
            save_file(dict(sd), tmp / comp / WEIGHT_FILES[comp], metadata={"format": "pt"})
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_single_file(path: Path) -> dict[str, torch.Tensor]:
    """A single-file checkpoint: ``.safetensors``, or a MindONE ``.ckpt`` of the same layout under MindSpore's
    parameter names (``mindone_sdxl.from_mindspore_names``).
    """
    if path.suffix == ".ckpt":
        from .mindone_sdxl import from_mindspore_names
        from .mindspore_ckpt import load_ckpt

        return from_mindspore_names(load_ckpt(path).tensors)
    from safetensors.torch import load_file

    return load_file(path)


def run_to_single_file(args) -> int:
    from ..model_paths import check_family

    model_dir = local_model_dir(args.model, weights=True)
    check_family(str(model_dir), "StableDiffusionXLPipeline", "MODEL", "this converter writes")
    state = diffusers_to_single_file(model_dir)
    print(f"wrote {save_single_file(state, args.out, args.half)}: {len(state)} tensors")
    return 0


def run_from_single_file(args) -> int:
    from ..model_paths import check_family

    config_dir = local_model_dir(args.config, weights=False, flag="--config")
    check_family(str(config_dir), "StableDiffusionXLPipeline", "--config", "this converter reads")
    components, dropped = single_file_to_diffusers(load_single_file(args.single_file), config_dir)
    out = save_diffusers_folder(components, config_dir, args.out)
    print(f"wrote {out}: {', '.join(f'{c} {len(sd)} tensors' for c, sd in components.items())}")
    if dropped:
        print(f"{len(dropped)} keys of {args.single_file.name} have no diffusers weight (dropped):")
        print("\n".join(f"  {k}" for k in dropped))
    return 0


def add_to_single_file_args(parser, argv: list[str] | None = None) -> None:
    parser.add_argument("model", help="diffusers SDXL folder, tiny:sdxl, or a hub id")
    parser.add_argument("out", type=Path, help="output .safetensors in the original (sgm) layout")
    parser.add_argument("--half", action="store_true", help="store floating-point weights as fp16")
    parser.set_defaults(func=run_to_single_file)


def add_from_single_file_args(parser, argv: list[str] | None = None) -> None:
    parser.add_argument(
        "single_file", type=existing_file, help="original-layout SDXL .safetensors (or MindSpore .ckpt)"
    )
    parser.add_argument("out", type=Path, help="output diffusers folder (new or empty)")
    parser.add_argument("--config", default="stabilityai/stable-diffusion-xl-base-1.0",
                        help="diffusers SDXL folder or hub id giving configs, tokenizers and scheduler "
                             "(default: %(default)s; tiny:sdxl offline)")  # fmt: skip
    parser.set_defaults(func=run_from_single_file)
