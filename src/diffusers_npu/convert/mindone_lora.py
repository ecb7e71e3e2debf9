"""MindONE SDXL LoRA (MindSpore ``.ckpt``) <-> diffusers/PEFT LoRA (safetensors), matched by name.

MindONE (examples/stable_diffusion_xl, ``UNetModel_lora``) saves ``*_lora.ckpt`` with SGM names, e.g.
``model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.lora_A.weight`` of shape (rank, in).
Its own converter (tools/lora_conversion/convert_lora_ms2pt.py) zips two name lists by position with no shape
check, so a file in another order is silently mis-assigned. Here every name is translated: the SGM block prefix
through the block map derived from the UNet config (``sdxl_single_file.unet_block_prefixes``), the rest of the
name is the same in both (``transformer_blocks.N.attn1.to_q``, ``to_out.0``). Every target must be a
``nn.Linear`` of the UNet with matching shapes; any name that does not translate is an error that lists it.

The output is the PEFT layout that stock ``StableDiffusionXLPipeline.load_lora_weights`` reads
(``unet.<module>.lora_A.weight``), with diffusers' LoRA adapter metadata (``r``, ``lora_alpha``,
``target_modules``) in the safetensors header. The checkpoint does not store alpha (MindONE takes it from the
training yaml, ``lora_alpha: 4`` with ``lora_dim: 4``): ``--lora_alpha`` defaults to the rank, scale 1.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from . import existing_file
from .sdxl_single_file import UNET_PREFIX, local_model_dir, unet_block_prefixes

PEFT_PREFIX = "unet."
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY


@dataclass(frozen=True)
class LoraWeights:
    """A UNet LoRA in diffusers module names: (A, B) per module, and the alpha that scales it (alpha / rank)."""

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    alphas: dict[str, float]

    def ranks(self) -> dict[str, int]:
        return {m: a.shape[0] for m, (a, _) in self.pairs.items()}


def sgm_to_diffusers_blocks(unet_config: Mapping[str, Any]) -> dict[str, str]:
    """SGM attention-block prefix -> diffusers prefix, e.g. ``input_blocks.4.1.`` -> ``down_blocks.1.attentions.0.``."""
    return {sgm: dif for dif, sgm, kind in unet_block_prefixes(unet_config) if kind == "attention"}


def _split(names: Mapping[str, torch.Tensor], translate) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Group ``<module>.lora_{A,B}.weight`` tensors by translated module name; return (groups, untranslatable)."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    bad = []
    for key, value in names.items():
        m = _LORA_KEY.match(key)
        module = translate(m["module"]) if m else None
        if module is None:
            bad.append(key)
        else:
            groups.setdefault(module, {})[m["ab"]] = value
    return groups, bad


def _linear_shapes(unet_config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(out, in) of every ``nn.Linear`` of the UNet, built on the meta device from its config."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(unet_config))
    return {n: (m.out_features, m.in_features) for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)}


def check_pairs(groups: Mapping[str, Mapping[str, torch.Tensor]], unet_config: Mapping[str, Any]) -> None:
    """Every module must be a UNet ``nn.Linear`` with both halves: A (rank, in), B (out, rank).

    Raises one ``UserError`` listing every module that fails, with expected and found shapes.
    """
    linears = _linear_shapes(unet_config)
    problems = []
    for module, ab in sorted(groups.items()):
        if module not in linears:
            problems.append(f"{module}: no such nn.Linear in the UNet")
            continue
        if set(ab) != {"A", "B"}:
            problems.append(f"{module}: has only lora_{''.join(sorted(ab))}")
            continue
        (out_f, in_f), a, b = linears[module], ab["A"], ab["B"]
        rank = a.shape[0] if a.ndim == 2 else -1
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != in_f or tuple(b.shape) != (out_f, rank):
            problems.append(f"{module}: lora_A {list(a.shape)}, lora_B {list(b.shape)}; expected "
                            f"[rank, {in_f}] and [{out_f}, rank]")  # fmt: skip
    if problems:
        raise UserError(f"{len(problems)} LoRA modules do not fit the UNet: {'; '.join(problems)}")


def from_mindone(
    tensors: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any], lora_alpha: float | None = None
) -> LoraWeights:
    """MindONE LoRA tensors (SGM names) -> diffusers modules. ``lora_alpha`` None means alpha = rank (scale 1).

    Raises ``UserError`` listing every key that is not an SGM UNet attention LoRA weight, and every shape misfit.
    """
    blocks = sgm_to_diffusers_blocks(unet_config)

    def translate(module: str) -> str | None:
        if not module.startswith(UNET_PREFIX):
            return None
        rest = module[len(UNET_PREFIX) :]
        sgm = next((p for p in blocks if rest.startswith(p)), None)
        return blocks[sgm] + rest[len(sgm) :] if sgm else None

    groups, bad = _split(tensors, translate)
    if bad:
        raise UserError(f"{len(bad)} keys are not MindONE SDXL UNet LoRA weights of this UNet: {', '.join(bad)}")
    check_pairs(groups, unet_config)
    pairs = {m: (ab["A"], ab["B"]) for m, ab in sorted(groups.items())}
    alphas = {m: float(lora_alpha if lora_alpha is not None else a.shape[0]) for m, (a, _) in pairs.items()}
    return LoraWeights(pairs, alphas)


def to_mindone(lora: LoraWeights, unet_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers modules -> MindONE SGM names. MindONE applies lora_alpha / lora_dim from its yaml, not the file:
    where alpha != rank the scale alpha / rank is folded into lora_B, so a yaml with lora_alpha = lora_dim matches.
    """
    to_sgm = {dif: sgm for sgm, dif in sgm_to_diffusers_blocks(unet_config).items()}
    out, bad = {}, []
    for module, (a, b) in lora.pairs.items():
        dif = next((p for p in to_sgm if module.startswith(p)), None)
        if dif is None:
            bad.append(module)
            continue
        name = UNET_PREFIX + to_sgm[dif] + module[len(dif) :]
        scale = lora.alphas[module] / a.shape[0]
        out[f"{name}.lora_A.weight"] = a
        out[f"{name}.lora_B.weight"] = b if scale == 1 else b * scale
    if bad:
        raise UserError(f"{len(bad)} LoRA modules are outside the UNet attention blocks MindONE trains: {bad}")
    return out


# ---- diffusers/PEFT files ------------------------------------------------------------------------------------


def peft_metadata(lora: LoraWeights) -> dict[str, Any]:
    """diffusers' LoRA adapter metadata (``LoraConfig`` kwargs): the most common rank/alpha plus exceptions."""
    ranks = lora.ranks()
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(lora.alphas.values()), key=list(lora.alphas.values()).count)
    return {
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {m: v for m, v in ranks.items() if v != r},
        "alpha_pattern": {m: v for m, v in lora.alphas.items() if v != alpha},
        "target_modules": sorted(lora.pairs),
    }


def save_peft(lora: LoraWeights, out: Path) -> Path:
    """Write ``unet.<module>.lora_{A,B}.weight`` + adapter metadata, the layout ``save_lora_weights`` writes."""
    from safetensors.torch import save_file

    tensors = {}
    for module, (a, b) in lora.pairs.items():
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.contiguous()
    meta = {f"{PEFT_PREFIX}{k}": v for k, v in peft_metadata(lora).items()}  # diffusers packs it per component
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        save_file(tensors, tmp, metadata={"format": "pt", METADATA_KEY: json.dumps(meta, sort_keys=True)})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def load_peft(path: Path, unet_config: Mapping[str, Any]) -> LoraWeights:
    """Read a diffusers/PEFT UNet LoRA safetensors (``unet.`` prefix; alphas from its metadata, else rank).

    Raises ``UserError`` listing keys that are not UNet LoRA weights (text-encoder LoRA has no MindONE form).
    """
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
        raw = (f.metadata() or {}).get(METADATA_KEY)
    meta = {k.removeprefix(PEFT_PREFIX): v for k, v in json.loads(raw).items()} if raw else {}
    groups, bad = _split(tensors, lambda m: m[len(PEFT_PREFIX) :] if m.startswith(PEFT_PREFIX) else None)
    if bad:
        raise UserError(f"{len(bad)} keys of {path} are not diffusers UNet LoRA weights: {', '.join(bad)}")
    check_pairs(groups, unet_config)
    pairs = {m: (ab["A"], ab["B"]) for m, ab in sorted(groups.items())}
    pattern = meta.get("alpha_pattern") or {}
    alphas = {m: float(pattern.get(m, meta.get("lora_alpha", a.shape[0]))) for m, (a, _) in pairs.items()}
    return LoraWeights(pairs, alphas)


# ---- CLI -----------------------------------------------------------------------------------------------------


def _unet_config(model: str) -> dict[str, Any]:
    from diffusers import UNet2DConditionModel

    return dict(UNet2DConditionModel.load_config(local_model_dir(model, weights=False, flag="--model") / "unet"))


def run_from_mindone(args) -> int:
    from .mindspore_ckpt import load_ckpt

    contents = load_ckpt(args.ckpt)
    for tag, why in {**contents.skipped, **dict.fromkeys(contents.strings, "string value")}.items():
        print(f"skipped {tag!r}: {why}")
    lora = from_mindone(contents.tensors, _unet_config(args.model), args.lora_alpha)
    save_peft(lora, args.out)
    ranks = sorted(set(lora.ranks().values()))
    print(f"wrote {args.out}: {2 * len(lora.pairs)} tensors, {len(lora.pairs)} modules, rank {ranks}, "
          f"alpha {sorted(set(lora.alphas.values()))}")  # fmt: skip
    return 0


def run_to_mindone(args) -> int:
    from .mindspore_ckpt import save_ckpt

    config = _unet_config(args.model)
    tensors = to_mindone(load_peft(args.lora, config), config)
    save_ckpt(args.out, tensors)
    print(f"wrote {args.out}: {len(tensors)} tensors")
    return 0


def add_from_mindone_args(parser, argv: list[str] | None = None) -> None:
    parser.add_argument("ckpt", type=existing_file, help="MindONE SDXL LoRA checkpoint (*_lora.ckpt)")
    parser.add_argument("out", type=Path, help="output .safetensors for pipe.load_lora_weights")
    parser.add_argument("--model", default="stabilityai/stable-diffusion-xl-base-1.0",
                        help="diffusers SDXL folder or hub id whose unet/config.json defines the block layout "
                             "(default: %(default)s; tiny:sdxl offline)")  # fmt: skip
    parser.add_argument("--lora_alpha", type=float, default=None,
                        help="LoRA alpha used in training (not stored in the .ckpt); default: the rank (scale 1)")  # fmt: skip
    parser.set_defaults(func=run_from_mindone)


def add_to_mindone_args(parser, argv: list[str] | None = None) -> None:
    parser.add_argument("lora", type=existing_file, help="diffusers/PEFT SDXL UNet LoRA .safetensors")
    parser.add_argument("out", type=Path, help="output MindONE LoRA .ckpt")
    parser.add_argument("--model", default="stabilityai/stable-diffusion-xl-base-1.0",
                        help="diffusers SDXL folder or hub id (unet/config.json); default: %(default)s")  # fmt: skip
    parser.set_defaults(func=run_to_mindone)
