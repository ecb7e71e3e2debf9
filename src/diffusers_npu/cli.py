"""``diffusers-npu``: one console script, one subcommand per concern, each imported only when it is run.

Add a subcommand with one line in ``COMMANDS``: ``name: ("module:function", "help")``, where ``function(parser,
argv)`` adds its arguments and ``parser.set_defaults(func=run)``; ``run(args)`` returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping
from pathlib import Path

from .errors import UserError, cli_entry, first_line


def _unreadable() -> tuple[type[BaseException], ...]:
    import pickle

    from safetensors import SafetensorError

    return (SafetensorError, EOFError, UnicodeDecodeError, pickle.UnpicklingError)


COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("diffusers_npu.convert:add_arguments",
                "convert weights: MindSpore .ckpt, MindONE LoRA, SDXL diffusers folder <-> single file"),
    "env": ("diffusers_npu.environment:add_arguments",
            "what a bug report needs: versions, torch/torch_npu builds, CANN, devices, kernels; known-bad combos"),
    "compare": ("diffusers_npu.compare:add_arguments",
                "compare two images or two folders of images: MAE, max error, PSNR, SSIM"),
}  # fmt: skip


def add_lazy_subcommands(
    parser: argparse.ArgumentParser, table: Mapping[str, tuple[str, str]], argv: list[str], dest: str
) -> None:
    """One subparser per ``table`` entry; only the one named first in ``argv`` imports its module and adds its
    arguments, so ``--help`` and unrelated subcommands never import torch or diffusers.
    """
    sub = parser.add_subparsers(dest=dest, metavar=dest.upper(), required=True)
    chosen = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    for name, (target, help_) in table.items():
        child = sub.add_parser(name, help=help_, description=help_)
        if chosen is not None and argv[chosen] == name:
            module, _, function = target.partition(":")
            getattr(importlib.import_module(module), function)(child, argv[chosen + 1 :])


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusers-npu", description="diffusers-npu tools")
    add_lazy_subcommands(parser, COMMANDS, argv, "command")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the chosen subcommand; return its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    if getattr(args, "before", None) is not None:  # a subcommand's checks before its work (convert: outputs)
        args.before(args)
    try:
        return int(args.func(args) or 0)
    except _unreadable() as err:  # a truncated or foreign input file, wherever a reader met it
        files = [str(v) for v in vars(args).values() if isinstance(v, (str, Path)) and Path(v).is_file()]
        first = first_line(err)
        raise UserError(f"cannot read {' or '.join(files) or 'the input'} ({first}); is it a complete file of "
                        "the kind this command takes?") from None  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
