"""DreamBooth LoRA fine-tuning of FLUX.1 (PEFT on the transformer's attention projections; optionally CLIP).

diffusers' train_dreambooth_lora_flux.py flags plus the reference's NPU aliases. Frozen modules in bf16 by
default (--mixed_precision fp16 or no selectable), LoRA weights in fp32; the run logs each module's precision.
Saves pytorch_lora_weights.safetensors for stock ``FluxPipeline.load_lora_weights``. Defaults to tiny:flux:

python examples/dreambooth/train_dreambooth_lora_flux.py --instance_data_dir dog --instance_prompt "a photo of sks dog"
    --with_prior_preservation --class_data_dir dog-class --class_prompt "a photo of a dog" --resolution 512
"""

from diffusers_npu.errors import cli_entry
from diffusers_npu.training import args, loop
from diffusers_npu.training.recipes.flux_lora import FluxLoRARecipe


@cli_entry
def main(argv: list[str] | None = None) -> None:
    cfg = args.parse_recipe_args(FluxLoRARecipe, __doc__, "tiny:flux", argv)
    loop.run(FluxLoRARecipe(cfg), cfg)


if __name__ == "__main__":
    main()
