"""Text-guided inpainting (reference test_infer/text-guide-image-inpainting.py, the diffusers "inpaint" guide;
the reference model is runwayml/stable-diffusion-inpainting). White mask pixels are repainted:

    python test_infer/text-guide-image-inpainting.py --model_path /models/sd-inpainting --image in.png --mask_image mask.png
"""

import sys

from diffusers_npu.errors import cli_entry
from diffusers_npu.inference import args, run

TASK = "text-guide-image-inpainting"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = args.new_parser(__doc__)
    args.add_model_args(parser, default_model="tiny:sd-inpaint")
    args.add_prompt_args(parser, default_prompt="Face of a yellow cat, high resolution, sitting on a park bench")
    args.add_image_args(parser, default_strength=1.0, mask=True)
    args.add_sampling_args(parser)
    return run.main(parser, argv, TASK)


if __name__ == "__main__":
    sys.exit(main())
