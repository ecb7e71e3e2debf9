"""Text-to-image with LoRA weights at --lora_scale (0 = no LoRA). With an LCM LoRA, sample in 4 steps:

python test_infer/lora.py --model_path /models/sdxl-base-1.0 --lora_path lcm-lora-sdxl --sampler lcm
    --num_inference_steps 4 --guidance_scale 1.5
"""

import sys

from diffusers_npu.errors import cli_entry
from diffusers_npu.inference import args, run

TASK = "lora"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = args.new_parser(__doc__)
    args.add_model_args(parser, default_model="tiny:sdxl", lora_required=True)
    args.add_prompt_args(
        parser, default_prompt="Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"
    )
    args.add_sampling_args(parser, steps=40, guidance=5.0)
    return run.main(parser, argv, TASK)


if __name__ == "__main__":
    sys.exit(main())
