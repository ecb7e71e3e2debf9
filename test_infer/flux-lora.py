"""FLUX.1 text-to-image with DreamBooth LoRA weights (examples/dreambooth/train_dreambooth_lora_flux.py) at
--lora_scale (0 = no LoRA). FLUX.1-dev takes the guidance scale as an input (no negative prompt pass):

python test_infer/flux-lora.py --model_path /models/FLUX.1-dev --lora_path outputs/flux-lora
    --prompt "a photo of sks dog in a bucket" --height 1024 --width 1024
"""

import sys

from diffusers_npu.errors import cli_entry
from diffusers_npu.inference import args, run

TASK = "flux-lora"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = args.new_parser(__doc__)
    args.add_model_args(parser, default_model="tiny:flux", lora_required=True)
    args.add_prompt_args(parser, default_prompt="a photo of sks dog in a bucket")
    args.add_sampling_args(parser, steps=28, guidance=3.5)
    return run.main(parser, argv, TASK)


if __name__ == "__main__":
    sys.exit(main())
