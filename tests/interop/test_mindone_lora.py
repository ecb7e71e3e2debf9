"""MindONE SDXL LoRA .ckpt -> diffusers: by name, shape-checked, and applied by stock load_lora_weights exactly as
the same weights applied by hand in PyTorch.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

from diffusers_npu import tiny
from diffusers_npu.cli import main
from diffusers_npu.convert import mindone_lora as ml
from diffusers_npu.convert.mindspore_ckpt import MS_NAMES, load_ckpt, save_ckpt
from diffusers_npu.errors import UserError

from . import _ms_bytes as B

RANK = 4
# The tiny SDXL UNet (tiny.py: CrossAttn in the second down level, first up level, and the mid block;
# layers_per_block=1) in sgm numbering, written out by hand: input_blocks.1 = level-0 res, .2 = downsampler,
# .3 = level-1 res + attention; output_blocks.0/.1 = level-0 res + attention (upsampler in .1.2).
TINY_SGM_TO_DIFFUSERS = {
    "input_blocks.3.1.": "down_blocks.1.attentions.0.",
    "middle_block.1.": "mid_block.attentions.0.",
    "output_blocks.0.1.": "up_blocks.0.attentions.0.",
    "output_blocks.1.1.": "up_blocks.0.attentions.1.",
}
# SDXL base (upstream-facts §4c, from MindONE's ms_lora_params.txt / pt_lora_params_ordered.txt).
SDXL_BASE_UNET = dict(
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    layers_per_block=2,
    mid_block_type="UNetMidBlock2DCrossAttn",
)
SDXL_BASE_TABLE = {
    "input_blocks.4.1.": "down_blocks.1.attentions.0.",
    "input_blocks.5.1.": "down_blocks.1.attentions.1.",
    "input_blocks.7.1.": "down_blocks.2.attentions.0.",
    "input_blocks.8.1.": "down_blocks.2.attentions.1.",
    "middle_block.1.": "mid_block.attentions.0.",
    "output_blocks.0.1.": "up_blocks.0.attentions.0.",
    "output_blocks.1.1.": "up_blocks.0.attentions.1.",
    "output_blocks.2.1.": "up_blocks.0.attentions.2.",
    "output_blocks.3.1.": "up_blocks.1.attentions.0.",
    "output_blocks.4.1.": "up_blocks.1.attentions.1.",
    "output_blocks.5.1.": "up_blocks.1.attentions.2.",
}


@pytest.fixture(scope="module")
def model_dir():
    return tiny.tiny_model_path("sdxl")


@pytest.fixture(scope="module")
def unet_config(model_dir):
    return json.loads((model_dir / "unet" / "config.json").read_text())


def lora_targets(unet) -> dict[str, torch.nn.Linear]:
    """What MindONE's UNetModel_lora trains: attn1/attn2 to_q, to_k, to_v, to_out.0 of every transformer block."""
    suffixes = tuple(f"{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0"))
    return {n: m for n, m in unet.named_modules() if n.endswith(suffixes)}


def to_sgm(module: str) -> str:
    prefix = next(d for d in TINY_SGM_TO_DIFFUSERS.values() if module.startswith(d))
    sgm = next(s for s, d in TINY_SGM_TO_DIFFUSERS.items() if d == prefix)
    return "model.diffusion_model." + sgm + module[len(prefix) :]


def make_lora(unet) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random (A, B) per target, keyed by diffusers module name; B is non-zero so the output changes."""
    g = torch.Generator().manual_seed(1)
    return {
        name: (
            torch.randn(RANK, lin.in_features, generator=g) * 0.3,
            torch.randn(lin.out_features, RANK, generator=g) * 0.3,
        )
        for name, lin in lora_targets(unet).items()
    }


def write_mindone_ckpt(path, lora, shuffle=False, extra=None):
    """The LoRA as MindONE saves it (sgm names), via the independent byte builder."""
    items = []
    for module, (a, b) in lora.items():
        items += [(f"{to_sgm(module)}.lora_A.weight", a), (f"{to_sgm(module)}.lora_B.weight", b)]
    items += list((extra or {}).items())
    if shuffle:
        random.Random(0).shuffle(items)
    raw = lambda t: t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()  # noqa: E731
    path.write_bytes(b"".join(B.record(k, list(v.shape), MS_NAMES[v.dtype], raw(v)) for k, v in items))
    return path


def run_pipe(pipe):
    out = pipe("a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    return torch.from_numpy(out.images)


def test_block_map_matches_mindone_sdxl_table():
    assert ml.sgm_to_diffusers_blocks(SDXL_BASE_UNET) == SDXL_BASE_TABLE


def test_block_map_of_tiny_sdxl(unet_config):
    assert ml.sgm_to_diffusers_blocks(unet_config) == TINY_SGM_TO_DIFFUSERS


@pytest.mark.parametrize("alpha", [None, 8.0])
def test_ckpt_lora_changes_pipeline_exactly_as_applied_in_pytorch(tmp_path, model_dir, alpha):
    pipe = tiny.build_pipeline("sdxl")
    lora = make_lora(pipe.unet)
    ckpt = write_mindone_ckpt(tmp_path / "sdxl_lora.ckpt", lora)
    out = tmp_path / "lora.safetensors"
    argv = ["convert", "mindone-lora", str(ckpt), str(out), "--model", str(model_dir)]
    assert main(argv + (["--lora_alpha", str(alpha)] if alpha else [])) == 0
    base = run_pipe(pipe)

    pipe.load_lora_weights(str(out))  # stock diffusers
    converted = load_file(out)
    (adapter,) = pipe.unet.peft_config
    applied = get_peft_model_state_dict(pipe.unet, adapter_name=adapter)
    # diffusers ignores keys it does not recognise: count that every tensor of the file was applied
    assert len(converted) == 2 * len(lora) and len(applied) == len(converted)
    for key, value in converted.items():
        assert torch.equal(applied[key.removeprefix("unet.")], value), key
    with_lora = run_pipe(pipe)

    pipe.unload_lora_weights()  # back to the base weights; now the same LoRA by hand, as PEFT's Linear does
    assert torch.equal(run_pipe(pipe), base)
    scale = (alpha or RANK) / RANK
    hooks = []
    for name, lin in lora_targets(pipe.unet).items():
        a, b = lora[name]
        hooks.append(lin.register_forward_hook(lambda m, i, o, a=a, b=b: o + F.linear(F.linear(i[0], a), b) * scale))
    by_hand = run_pipe(pipe)
    for hook in hooks:
        hook.remove()

    assert not torch.equal(with_lora, base)
    assert torch.equal(with_lora, by_hand)


def test_shuffled_ckpt_converts_identically(tmp_path, unet_config):
    lora = make_lora(tiny.build_pipeline("sdxl").unet)
    ordered = load_ckpt(write_mindone_ckpt(tmp_path / "a.ckpt", lora)).tensors
    shuffled = load_ckpt(write_mindone_ckpt(tmp_path / "b.ckpt", lora, shuffle=True)).tensors
    assert list(ordered) != list(shuffled)
    x, y = ml.from_mindone(ordered, unet_config), ml.from_mindone(shuffled, unet_config)
    assert x.pairs.keys() == y.pairs.keys() == lora.keys()
    for module, (a, b) in lora.items():
        assert torch.equal(y.pairs[module][0], a) and torch.equal(y.pairs[module][1], b)


def test_unknown_keys_and_wrong_shapes_are_listed(tmp_path, unet_config, capsys):
    lora = make_lora(tiny.build_pipeline("sdxl").unet)
    tensors = {f"{to_sgm(m)}.lora_{x}.weight": t for m, (a, b) in lora.items() for x, t in (("A", a), ("B", b))}
    unknown = {
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32),
        "conditioner.embedders.0.transformer.text_model.foo.lora_A.weight": torch.zeros(4, 32),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight": torch.zeros(64, 64),
    }
    with pytest.raises(UserError) as err:
        ml.from_mindone({**tensors, **unknown}, unet_config)
    for key in unknown:
        assert key in str(err.value)

    bad_a = "model.diffusion_model.middle_block.1.transformer_blocks.1.attn2.to_k.lora_A.weight"
    bad_b = "model.diffusion_model.output_blocks.1.1.transformer_blocks.0.attn1.to_v.lora_B.weight"
    wrong = {**tensors, bad_a: torch.zeros(RANK, 63), bad_b: torch.zeros(65, RANK)}
    with pytest.raises(UserError) as err:
        ml.from_mindone(wrong, unet_config)
    assert "mid_block.attentions.0.transformer_blocks.1.attn2.to_k" in str(err.value)
    assert "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_v" in str(err.value)
    assert str(err.value).startswith("2 LoRA modules")

    del tensors[bad_a]
    with pytest.raises(UserError, match="has only lora_B"):
        ml.from_mindone(tensors, unet_config)

    ckpt = write_mindone_ckpt(tmp_path / "x.ckpt", lora, extra={"foo.lora_A.weight": torch.zeros(2)})
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "mindone-lora", str(ckpt), str(tmp_path / "o.safetensors"), "--model", "tiny:sdxl"])
    assert exit_.value.code == 2 and "foo.lora_A.weight" in capsys.readouterr().err


def test_metadata_and_reverse_to_mindone(tmp_path, model_dir, unet_config):
    lora = make_lora(tiny.build_pipeline("sdxl").unet)
    ckpt = write_mindone_ckpt(tmp_path / "a.ckpt", lora)
    out = tmp_path / "a.safetensors"
    assert main(["convert", "mindone-lora", str(ckpt), str(out), "--model", str(model_dir), "--lora_alpha", "2"]) == 0
    with safe_open(out, framework="pt") as f:
        meta = json.loads(f.metadata()[ml.METADATA_KEY])
    assert meta["unet.r"] == RANK and meta["unet.lora_alpha"] == 2.0
    assert sorted(meta["unet.target_modules"]) == sorted(lora)

    back = tmp_path / "back.ckpt"
    assert main(["convert", "lora-to-mindone", str(out), str(back), "--model", str(model_dir)]) == 0
    round_trip = load_ckpt(back).tensors
    for module, (a, b) in lora.items():
        assert torch.equal(round_trip[f"{to_sgm(module)}.lora_A.weight"], a)
        # MindONE has no alpha in the file: the scale 2/4 is folded into lora_B
        assert torch.equal(round_trip[f"{to_sgm(module)}.lora_B.weight"], b * 0.5)


def test_reverse_rejects_text_encoder_lora(tmp_path, unet_config):
    from safetensors.torch import save_file

    path = tmp_path / "te.safetensors"
    save_file({"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 32)}, path)
    with pytest.raises(UserError, match="text_encoder.text_model"):
        ml.load_peft(path, unet_config)


def test_mindone_tensors_via_our_writer_convert_too(tmp_path, unet_config):
    lora = make_lora(tiny.build_pipeline("sdxl").unet)
    tensors = {f"{to_sgm(m)}.lora_{x}.weight": t for m, (a, b) in lora.items() for x, t in (("A", a), ("B", b))}
    path = save_ckpt(tmp_path / "w.ckpt", tensors)
    assert len(ml.from_mindone(load_ckpt(path).tensors, unet_config).pairs) == len(lora)
