"""Unconditional image generation with a DDPM pipeline (reference test_infer/unconditional-image-generation.py,
the diffusers "unconditional image generation" guide; the reference model is anton-l/ddpm-butterflies-128).
--num_images_per_prompt sets how many images are made:

    python test_infer/unconditional-image-generation.py --model_path /models/ddpm-butterflies-128 --sampler ddim
"""

import sys

from diffusers_npu.errors import cli_entry
from diffusers_npu.inference import args, run

TASK = "unconditional-image-generation"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = args.new_parser(__doc__)
    args.add_model_args(parser, default_model="tiny:ddpm")
    args.add_sampling_args(parser, steps=1000)
    return run.main(parser, argv, TASK)


if __name__ == "__main__":
    sys.exit(main())
