"""Full fine-tuning of Stable Diffusion XL (base) on image-caption data.

diffusers' train_text_to_image_sdxl.py flags plus the reference's NPU aliases; --cache_latents
precomputes VAE latents and both text encoders' embeddings once. Defaults to tiny:sdxl (offline).
"""

from diffusers_npu.errors import cli_entry
from diffusers_npu.training import args, loop
from diffusers_npu.training.recipes.sdxl import SDXLRecipe


@cli_entry
def main(argv: list[str] | None = None) -> None:
    cfg = args.parse_recipe_args(SDXLRecipe, __doc__, "tiny:sdxl", argv)
    loop.run(SDXLRecipe(cfg), cfg)


if __name__ == "__main__":
    main()
