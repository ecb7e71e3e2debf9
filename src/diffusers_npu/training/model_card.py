"""The output folder's README.md: the model card diffusers' training scripts write (``save_model_card``), made from
diffusers' own template (diffusers/utils/model_card_template.md via ``huggingface_hub.ModelCard.from_template``)
without the hub lookup ``load_or_create_model_card`` does first, so it works offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import validation


@dataclass(frozen=True)
class ModelCardInfo:
    """What a recipe says about its output: a title, hub tags, and Python that loads the result."""

    title: str
    tags: tuple[str, ...]
    usage: str


# The settings a reader needs to reproduce or judge a run (training/config.py names), when the config has them.
KEY_SETTINGS = ("resolution", "train_batch_size", "gradient_accumulation_steps", "max_train_steps",
                "num_train_epochs", "learning_rate", "lr_scheduler", "mixed_precision", "optimizer", "rank",
                "lora_alpha", "lora_format", "use_ema", "snr_gamma", "prediction_type", "enable_bucket",
                "instance_prompt", "with_prior_preservation", "seed")  # fmt: skip


def description(cfg, info: ModelCardInfo, steps: int, grid: Path | None, out: Path) -> str:
    lines = [f"# {info.title}", "", f"Fine-tuned from `{cfg.pretrained_model_name_or_path}` for {steps} optimizer "
             "steps with diffusers-npu (training recipes on stock diffusers).", "",
             "## Training settings", "", "| setting | value |", "|---|---|"]  # fmt: skip
    for name in KEY_SETTINGS:
        value = getattr(cfg, name, None)
        if value not in (None, False):
            lines.append(f"| `--{name}` | `{value}` |")
    prompts = validation.prompts(cfg)
    if prompts:
        lines += ["", "## Validation prompts", "", *(f"- {p}" for p in prompts)]
        if grid is not None:
            lines += ["", f"![validation images, a row per prompt]({grid.relative_to(out).as_posix()})"]
    lines += ["", "## Use", "", "```python", info.usage.strip(), "```", ""]
    return "\n".join(lines)


def write(path: Path, cfg, info: ModelCardInfo, steps: int, grid: Path | None, out: Path) -> Path:
    """Write the model card for a finished run to ``path`` (README.md of the output folder)."""
    from diffusers.utils.hub_utils import MODEL_CARD_TEMPLATE_PATH, populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name="diffusers", inference=True, base_model=cfg.pretrained_model_name_or_path,
                         instance_prompt=getattr(cfg, "instance_prompt", None))  # fmt: skip
    card = ModelCard.from_template(card_data=data, template_path=MODEL_CARD_TEMPLATE_PATH,
                                   model_description=description(cfg, info, steps, grid, out))  # fmt: skip
    populate_model_card(card, tags=["diffusers", "diffusers-npu", *info.tags]).save(str(path))
    return path
