"""Text-to-image: prompts to images (reference test_infer/text-to-image.py, the diffusers "conditional image
generation" guide). The reference loads CompVis/ldm-text2im-large-256; any local diffusers folder works:

    python test_infer/text-to-image.py --model_path /models/stable-diffusion-v1-5 --sampler dpm++2m-karras
"""

import sys

from diffusers_npu.errors import cli_entry
from diffusers_npu.inference import args, run

TASK = "text-to-image"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = args.new_parser(__doc__)
    args.add_model_args(parser, default_model="tiny:sd15")
    args.add_prompt_args(parser, default_prompt="An image of a squirrel in Picasso style")
    args.add_sampling_args(parser)
    return run.main(parser, argv, TASK)


if __name__ == "__main__":
    sys.exit(main())
