"""LoRA fine-tuning of Stable Diffusion XL (PEFT on the UNet attention projections).

diffusers' train_text_to_image_lora_sdxl.py flags plus the reference's NPU aliases. Saves
pytorch_lora_weights.safetensors for stock ``StableDiffusionXLPipeline.load_lora_weights``.
"""

from diffusers_npu.errors import cli_entry
from diffusers_npu.training import args, loop
from diffusers_npu.training.recipes.sdxl import SDXLLoRARecipe


@cli_entry
def main(argv: list[str] | None = None) -> None:
    cfg = args.parse_recipe_args(SDXLLoRARecipe, __doc__, "tiny:sdxl", argv)
    loop.run(SDXLLoRARecipe(cfg), cfg)


if __name__ == "__main__":
    main()
