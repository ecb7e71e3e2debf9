"""Helpers every recipe uses: PEFT LoRA config, moving frozen modules, the batch's pixels with --random_flip."""

from __future__ import annotations

import torch

# PEFT targets of diffusers' train_text_to_image_lora(.py|_sdxl.py): the attention projections.
UNET_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
# --train_text_encoder (diffusers' train_dreambooth_lora*.py / train_text_to_image_lora_sdxl.py): CLIP attention.
CLIP_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def lora_config(rank: int, alpha: int | None, targets: tuple[str, ...] = UNET_LORA_TARGETS):
    """PEFT LoraConfig as upstream: gaussian init, alpha defaulting to the rank (scale 1)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(targets))


def move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move ``module`` to ``device`` and cast it to ``dtype`` only if it is not in it already: diffusers models warn
    on every ``.to(dtype)`` about modules to keep in fp32 (diffusers/models/modeling_utils.py ``to``)."""
    module.to(device)
    if module.dtype != dtype:
        module.to(dtype=dtype)


def pixels(batch: dict, device: torch.device, dtype: torch.dtype, random_flip: bool) -> torch.Tensor:
    """The batch's images on ``device`` in ``dtype``, (B, 3, H, W), with --random_flip applied (and, for flipped
    rows, ``batch["crop_top_lefts"]`` replaced by the mirrored frame's coordinates)."""
    out = batch["pixel_values"].to(device, dtype=dtype, non_blocking=True)
    if random_flip:
        flip = torch.rand(out.shape[0]) < 0.5  # global RNG: restored exactly on resume
        out = torch.where(flip.to(out.device)[:, None, None, None], out.flip(-1), out)
        if "flipped_crop_top_lefts" in batch:  # crop coordinates in the mirrored frame, as diffusers' SDXL script
            batch["crop_top_lefts"] = torch.where(
                flip.to(batch["crop_top_lefts"].device)[:, None],
                batch["flipped_crop_top_lefts"],
                batch["crop_top_lefts"],
            )
    return out


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error in fp32, (B,), whatever the rank of the tensors."""
    return torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(dim=1)


def model_source(cfg, pipeline_cls) -> str:
    """The loadable path of ``--pretrained_model_name_or_path``: a folder, hub id or ``tiny:<kind>``, or a single-file
    checkpoint converted once (single_file.py; the main process converts, the others then reuse its folder)."""
    from pathlib import Path

    from accelerate import PartialState

    from ...model_paths import check_family
    from ...single_file import resolve

    flag = "--pretrained_model_name_or_path"
    with PartialState().main_process_first():
        path = resolve(cfg.pretrained_model_name_or_path, flag, pipeline_cls, cfg.single_file_config,
                       cfg.original_config, Path(cfg.output_dir))  # fmt: skip
    check_family(path, pipeline_cls.__name__, flag)
    return path
