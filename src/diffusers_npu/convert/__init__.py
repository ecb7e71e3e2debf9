"""``diffusers-npu convert WHAT``: weight conversions between MindSpore/MindONE, diffusers, kohya and single-file
layouts.

One line per conversion in ``CONVERTERS`` (``name: ("module:function", "help")``); a module is imported only when
its conversion runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError

_P = "diffusers_npu.convert."
CONVERTERS: dict[str, tuple[str, str]] = {
    "mindone-lora": (_P + "mindone_lora:add_from_mindone_args",
                     "MindONE SDXL LoRA .ckpt -> diffusers/PEFT LoRA .safetensors (by name, shape-checked)"),
    "lora-to-mindone": (_P + "mindone_lora:add_to_mindone_args",
                        "diffusers/PEFT SDXL UNet LoRA .safetensors -> MindONE LoRA .ckpt"),
    "ckpt-to-safetensors": (_P + "mindspore_ckpt:add_to_safetensors_args",
                            "MindSpore .ckpt -> .safetensors, names and values unchanged"),
    "safetensors-to-ckpt": (_P + "mindspore_ckpt:add_to_ckpt_args",
                            ".safetensors -> MindSpore .ckpt, names and values unchanged"),
    "sdxl-to-single-file": (_P + "sdxl_single_file:add_to_single_file_args",
                            "diffusers SDXL folder -> original single-file .safetensors"),
    "single-file-to-sdxl": (_P + "sdxl_single_file:add_from_single_file_args",
                            "original single-file SDXL (.safetensors or MindONE .ckpt) -> diffusers folder"),
    "sdxl-to-mindone": (_P + "mindone_sdxl:add_to_mindone_args",
                        "diffusers SDXL folder -> MindONE full-model .ckpt (sgm layout, MindSpore names)"),
    "lora-to-kohya": (_P + "kohya_lora:add_to_kohya_args",
                      "diffusers SD/SDXL LoRA .safetensors -> kohya LoRA (A1111, ComfyUI), alphas kept"),
    "kohya-to-lora": (_P + "kohya_lora:add_from_kohya_args",
                      "kohya LoRA (SD, SDXL, FLUX) -> diffusers LoRA with its config, via stock load_lora_weights"),
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """The ``convert`` subcommand: one sub-subcommand per entry of ``CONVERTERS``, each writing ``out``, which is
    checked before the conversion runs (``check_output``)."""
    from ..cli import add_lazy_subcommands

    add_lazy_subcommands(parser, CONVERTERS, argv, "what")
    parser.set_defaults(before=check_output)


def check_output(args: argparse.Namespace) -> None:
    """``out`` of a converter: never one of its input paths, never a folder where a file (a name with a suffix)
    is written, and writable; a folder output (no suffix) must not be an existing file."""
    from ..paths import output_dir, output_file

    out = getattr(args, "out", None)
    if out is None:
        return
    inputs = [Path(v) for k, v in vars(args).items() if k != "out" and isinstance(v, (str, Path)) and Path(v).exists()]
    if Path(out).suffix:
        output_file(out, inputs, "OUT")
    else:
        if any(Path(out).resolve() == i.resolve() for i in inputs):
            raise UserError(f"OUT {out} is also an input; name another folder, the input is kept")
        output_dir(out, "OUT")


def existing_file(value: str) -> Path:
    """argparse ``type`` for an input file: a missing one is a usage error naming it, not a traceback."""
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value} is not a file")
    return path
