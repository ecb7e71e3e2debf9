"""SDXL refiner: image-to-image on a base output (MindONE SDXL inference "SDXL-Refiner"):

python test_infer/sdxl-refiner.py --model_path /models/sdxl-refiner-1.0 --image outputs/p0000_s0.png
"""

import sys

from diffusers_npu.errors import cli_entry
from diffusers_npu.inference import args, run

TASK = "sdxl-refiner"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = args.new_parser(__doc__)
    args.add_model_args(parser, default_model="tiny:sdxl-refiner")
    args.add_prompt_args(
        parser, default_prompt="Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"
    )
    args.add_image_args(parser, default_strength=0.3)
    args.add_sampling_args(parser, steps=40, guidance=5.0)
    return run.main(parser, argv, TASK)


if __name__ == "__main__":
    sys.exit(main())
