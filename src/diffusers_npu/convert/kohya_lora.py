"""diffusers/PEFT LoRA <-> kohya LoRA (the layout kohya sd-scripts, A1111 and ComfyUI read), through diffusers'
own converters; nothing is renamed by hand.

Kohya names a module ``lora_unet_<diffusers module, dots as underscores>`` (``lora_te1_`` / ``lora_te2_`` for the
text encoders) with ``lora_down`` (A), ``lora_up`` (B) and a per-module ``alpha``: the update is
``alpha / rank * up @ down``.

- To kohya (SD 1.x/2.x, SDXL): ``diffusers.utils.convert_state_dict_to_kohya``. It writes every ``alpha`` as the
  rank (scale 1); the file's own alpha (diffusers' LoRA adapter metadata, ``lora_alpha`` and ``alpha_pattern``
  per component) is put back here, so a LoRA trained with ``--lora_alpha`` != ``--rank`` keeps its scale.
  diffusers has no FLUX writer for kohya's names, so a FLUX LoRA is refused.
- From kohya (any family stock ``load_lora_weights`` reads: SD, SDXL with kohya's SGM block names, FLUX): the
  file is loaded into the base model's pipeline by stock ``load_lora_weights``, and each adapted component is
  written back with ``save_lora_weights`` and its PEFT config (rank, alpha, their per-module patterns) as metadata.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import torch

from ..errors import UserError

FILE_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")  # LoRA-bearing pipeline parts


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            header = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({err}); pass a LoRA .safetensors") from None
    return tensors, json.loads(header.get(METADATA_KEY, "{}"))


def _alpha(metadata: dict, component: str, module: str) -> float | None:
    """The adapter's alpha for ``module`` of ``component`` from diffusers' metadata (None if it has none)."""
    pattern = metadata.get(f"{component}.alpha_pattern") or {}
    for key, value in pattern.items():
        if module == key or module.endswith(f".{key}"):
            return float(value)
    alpha = metadata.get(f"{component}.lora_alpha")
    return None if alpha is None else float(alpha)


def as_peft(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' LoRA file layouts (``unet.<module>.lora.down.weight`` as its training scripts save them, text
    encoders' ``lora_linear_layer``, or PEFT's ``lora_A``) in PEFT's names, by diffusers' own mappings."""
    from diffusers.utils.state_dict_utils import (
        StateDictType,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    unet = convert_unet_state_dict_to_peft({k: v for k, v in tensors.items() if k.startswith("unet.")})
    text = {k: v for k, v in tensors.items() if not k.startswith("unet.")}
    if any("lora_linear_layer" in k for k in text):
        text = convert_state_dict_to_peft(text, original_type=StateDictType.DIFFUSERS)
    return {**unet, **text}


def diffusers_to_kohya(tensors: dict[str, torch.Tensor], metadata: dict) -> dict[str, torch.Tensor]:
    """A diffusers-format LoRA state dict (``unet.<module>.lora_A.weight``, ...) in kohya's names and alphas."""
    from diffusers.utils import convert_state_dict_to_kohya

    if any(k.startswith("transformer.") for k in tensors):
        raise UserError("a FLUX (transformer) LoRA has no kohya writer in diffusers; keep the diffusers format")
    tensors = as_peft(tensors)
    if not any(".lora_A." in k for k in tensors):
        raise UserError("the file holds no diffusers/PEFT LoRA weights (no '.lora_A.' keys); is it kohya already?")
    kohya = convert_state_dict_to_kohya(tensors)
    # convert_state_dict_to_kohya names "unet.a.b.lora_A.weight" as "lora_unet_a_b.lora_down.weight"; the same
    # renaming of each source module gives the alpha key it wrote.
    for key in tensors:
        if ".lora_A." not in key:
            continue
        component, _, module = key.partition(".")
        module = module.split(".lora_A.")[0]
        alpha = _alpha(metadata, component, module)
        if alpha is not None:
            converted = convert_state_dict_to_kohya({key: tensors[key]})
            (alpha_key,) = [k for k in converted if k.endswith(".alpha")]
            kohya[alpha_key] = torch.tensor(alpha)
    return kohya


def kohya_to_pipeline_lora(kohya_file: Path, model: str, out_dir: Path) -> Path:
    """Load ``kohya_file`` into ``model``'s pipeline with stock ``load_lora_weights`` and write it in diffusers'
    format (with its PEFT config as metadata) to ``out_dir/pytorch_lora_weights.safetensors``."""
    from diffusers import DiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    from ..model_paths import resolve_model_path

    pipe = DiffusionPipeline.from_pretrained(resolve_model_path(model, flag="--pretrained_model_name_or_path"))
    try:
        pipe.load_lora_weights(str(kohya_file), adapter_name="converted")
    except (ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"{kohya_file} does not load as a LoRA of {model} ({err}); check the base model") from None
    layers = {}
    for name in COMPONENTS:
        component = getattr(pipe, name, None)
        config = getattr(component, "peft_config", {}).get("converted")
        if config is not None:
            layers[f"{name}_lora_layers"] = get_peft_model_state_dict(component, adapter_name="converted")
            layers[f"{name}_lora_adapter_metadata"] = config.to_dict()
    if not layers:
        raise UserError(f"{kohya_file} adapted no part of {model}; check the base model")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    type(pipe).save_lora_weights(save_directory=str(tmp), safe_serialization=True, **layers)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.replace(tmp / FILE_NAME, out_dir / FILE_NAME)
    tmp.rmdir()
    return out_dir / FILE_NAME


def save_kohya(
    tensors: dict[str, torch.Tensor], out: Path, rank: int | None = None, alpha: float | None = None
) -> Path:
    """Write a kohya LoRA file atomically, with kohya's ``ss_network_*`` metadata where known."""
    from safetensors.torch import save_file

    metadata = {"ss_network_module": "networks.lora"}
    if rank is not None:
        metadata.update(ss_network_dim=str(rank), ss_network_alpha=str(alpha if alpha is not None else rank))
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def convert_file_to_kohya(path: Path) -> None:
    """Rewrite diffusers-format LoRA file ``path`` in kohya's format, in place (``--lora_format kohya``)."""
    tensors, metadata = _read(path)
    ranks = {v.shape[0] for k, v in as_peft(tensors).items() if ".lora_A." in k}
    rank = ranks.pop() if len(ranks) == 1 else None
    save_kohya(diffusers_to_kohya(tensors, metadata), path, rank, _alpha(metadata, "unet", "") if rank else None)


def _input(path: Path) -> Path:
    return path / FILE_NAME if path.is_dir() else path


def run_to_kohya(args) -> int:
    src = _input(args.lora)
    if args.out.resolve() == src.resolve():
        raise UserError(f"OUT {args.out} is also the input; name another file, the input is kept")
    tensors, metadata = _read(src)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_kohya(diffusers_to_kohya(tensors, metadata), args.out)
    print(args.out)
    return 0


def run_from_kohya(args) -> int:
    if not args.kohya.is_file():
        raise UserError(f"{args.kohya} is not a file; pass a kohya LoRA .safetensors")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"{args.out} is a file; the output is a folder (it gets {FILE_NAME})")
    print(kohya_to_pipeline_lora(args.kohya, args.pretrained_model_name_or_path, args.out))
    return 0


def add_to_kohya_args(parser, argv: list[str] | None = None) -> None:
    parser.add_argument("lora", type=Path, help=f"diffusers LoRA .safetensors, or a folder with {FILE_NAME}")
    parser.add_argument("out", type=Path, help="output kohya .safetensors (for A1111, ComfyUI, kohya sd-scripts)")
    parser.set_defaults(func=run_to_kohya)


def add_from_kohya_args(parser, argv: list[str] | None = None) -> None:
    parser.add_argument("kohya", type=Path, help="kohya LoRA .safetensors (A1111 / ComfyUI / kohya sd-scripts)")
    parser.add_argument("out", type=Path, help=f"output folder; gets {FILE_NAME} that load_lora_weights reads")
    parser.add_argument("--pretrained_model_name_or_path", required=True,
                        help="the base model the LoRA is for (a diffusers folder, tiny:sd15, a hub id)")  # fmt: skip
    parser.set_defaults(func=run_from_kohya)
