"""Text-guided image-to-image (reference test_infer/text-guide-img-to-img.py, the diffusers "img2img" guide;
the reference model is nitrosocke/Ghibli-Diffusion):

    python test_infer/text-guide-img-to-img.py --model_path /models/Ghibli-Diffusion --image sketch.png
"""

import sys

from diffusers_npu.errors import cli_entry
from diffusers_npu.inference import args, run

TASK = "text-guide-img-to-img"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = args.new_parser(__doc__)
    args.add_model_args(parser, default_model="tiny:sd15")
    args.add_prompt_args(parser, default_prompt="ghibli style, a fantasy landscape with castles")
    args.add_image_args(parser, default_strength=0.75)
    args.add_sampling_args(parser)
    return run.main(parser, argv, TASK)


if __name__ == "__main__":
    sys.exit(main())
