"""Text-guided depth-to-image (reference test_infer/text-guide-depth-to-image.py, the diffusers "depth2img" guide;
the reference model is stabilityai/stable-diffusion-2-depth):

    python test_infer/text-guide-depth-to-image.py --model_path /models/sd-2-depth --image tigers.png --strength 0.7
"""

import sys

from diffusers_npu.errors import cli_entry
from diffusers_npu.inference import args, run

TASK = "text-guide-depth-to-image"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = args.new_parser(__doc__)
    args.add_model_args(parser, default_model="tiny:sd-depth")
    args.add_prompt_args(parser, default_prompt="two tigers", default_negative="bad, deformed, ugly, bad anatomy")
    args.add_image_args(parser, default_strength=0.7)
    args.add_sampling_args(parser)
    return run.main(parser, argv, TASK)


if __name__ == "__main__":
    sys.exit(main())
