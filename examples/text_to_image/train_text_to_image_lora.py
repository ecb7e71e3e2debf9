"""LoRA fine-tuning of Stable Diffusion 1.5 / 2.1 (PEFT on the UNet attention projections).

diffusers' train_text_to_image_lora.py flags plus the reference's NPU aliases. Saves
pytorch_lora_weights.safetensors that stock diffusers ``pipe.load_lora_weights(output_dir)`` loads.
"""

from diffusers_npu.errors import cli_entry
from diffusers_npu.training import args, loop
from diffusers_npu.training.recipes.sd import SDLoRARecipe


@cli_entry
def main(argv: list[str] | None = None) -> None:
    cfg = args.parse_recipe_args(SDLoRARecipe, __doc__, "tiny:sd15", argv)
    loop.run(SDLoRARecipe(cfg), cfg)


if __name__ == "__main__":
    main()
