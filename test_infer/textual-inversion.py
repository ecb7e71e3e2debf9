"""Textual inversion inference: load a learned embedding and use its token in the prompt (reference
test_infer/textual-inversion.py, the diffusers "textual inversion inference" guide with sd-concepts-library/cat-toy):

    python test_infer/textual-inversion.py --model_path /models/sd-v1-5 --textual_inversion_path cat-toy/learned_embeds.bin
"""

import sys

from diffusers_npu.errors import cli_entry
from diffusers_npu.inference import args, run

TASK = "textual-inversion"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = args.new_parser(__doc__)
    args.add_model_args(parser, default_model="tiny:sd15")
    args.add_textual_inversion_args(parser)
    args.add_prompt_args(parser, default_prompt="A <cat-toy> backpack")
    args.add_sampling_args(parser)
    return run.main(parser, argv, TASK)


if __name__ == "__main__":
    sys.exit(main())
