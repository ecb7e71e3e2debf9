"""SDXL base text-to-image (MindONE SDXL inference "SDXL-Base"; stabilityai/stable-diffusion-xl-base-1.0):

python test_infer/sdxl-base.py --model_path /models/sdxl-base-1.0 --sampler euler --discretization legacy
"""

import sys

from diffusers_npu.errors import cli_entry
from diffusers_npu.inference import args, run

TASK = "sdxl-base"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = args.new_parser(__doc__)
    args.add_model_args(parser, default_model="tiny:sdxl")
    args.add_prompt_args(
        parser, default_prompt="Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"
    )
    args.add_sampling_args(parser, steps=40, guidance=5.0)
    return run.main(parser, argv, TASK)


if __name__ == "__main__":
    sys.exit(main())
