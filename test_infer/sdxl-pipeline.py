"""SDXL base + refiner as an ensemble of experts: the base denoises the first --high_noise_frac of the steps
(denoising_end), the refiner the rest (denoising_start) on the base latents (MindONE "SDXL-Pipeline"):

    python test_infer/sdxl-pipeline.py --model_path /models/sdxl-base-1.0 --refiner_path /models/sdxl-refiner-1.0
"""

import sys

from diffusers_npu.errors import cli_entry
from diffusers_npu.inference import args, run

TASK = "sdxl-pipeline"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = args.new_parser(__doc__)
    args.add_model_args(parser, default_model="tiny:sdxl", refiner="tiny:sdxl-refiner")
    args.add_prompt_args(parser, default_prompt="A majestic lion jumping from a big stone at night")
    args.add_sampling_args(parser, steps=40, guidance=5.0, ensemble=True)
    return run.main(parser, argv, TASK)


if __name__ == "__main__":
    sys.exit(main())
