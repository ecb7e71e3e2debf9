"""Full fine-tuning of Stable Diffusion 1.5 / 2.1 on image-caption data.

diffusers' train_text_to_image.py flags, plus the Ascend ModelZoo port's (--use_npu_fuse_adamW,
--enable_npu_flash_attention, --use_megatron_npu_adamW, ...) as aliases. Defaults to the built-in tiny
model (tiny:sd15), so it runs offline as is. The loop lives in diffusers_npu.training.loop.
"""

from diffusers_npu.errors import cli_entry
from diffusers_npu.training import args, loop
from diffusers_npu.training.recipes.sd import SDRecipe


@cli_entry
def main(argv: list[str] | None = None) -> None:
    cfg = args.parse_recipe_args(SDRecipe, __doc__, "tiny:sd15", argv)
    loop.run(SDRecipe(cfg), cfg)


if __name__ == "__main__":
    main()
