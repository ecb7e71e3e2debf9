"""diffusers SDXL folder -> MindONE full-model .ckpt -> diffusers: bit-identical, under MindSpore's names."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from diffusers_npu import tiny
from diffusers_npu.cli import main
from diffusers_npu.convert import mindone_sdxl as ms
from diffusers_npu.convert import sdxl_single_file as sf
from diffusers_npu.convert.mindspore_ckpt import iter_records, load_ckpt
from diffusers_npu.errors import UserError

CLIP_L = "conditioner.embedders.0.transformer.text_model."
OPEN_CLIP = "conditioner.embedders.1.model."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_sdxl")
    tiny.build_pipeline("sdxl").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def ckpt(model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("ms") / "sd_xl_ms.ckpt"
    assert main(["convert", "sdxl-to-mindone", str(model_dir), str(path)]) == 0
    return path


def test_round_trip_through_mindone_ckpt_is_bit_identical(tmp_path, model_dir, ckpt):
    out = tmp_path / "back"
    assert main(["convert", "single-file-to-sdxl", str(ckpt), str(out), "--config", str(model_dir)]) == 0
    for comp, weights in sf.WEIGHT_FILES.items():  # unet, vae, text_encoder, text_encoder_2
        before, after = load_file(model_dir / comp / weights), load_file(out / comp / weights)
        assert before.keys() == after.keys(), comp
        for key, value in before.items():
            assert after[key].dtype == value.dtype and torch.equal(after[key], value), f"{comp}.{key}"


def _mindone_rule(key: str) -> str:
    """The renames of MindONE's own converter (convert_diffusers_to_mindone_sdxl.py ``convert_weight``), written
    out again independently of ``MINDSPORE_PARAMS``.
    """
    resblock_norm = (
        r"model\.diffusion_model\.(input_blocks|middle_block|output_blocks)\.\d+\.(0\.)?(in|out)_layers\.0\."
    )
    if "norm" in key or "ln_" in key or "model.diffusion_model.out.0." in key or re.match(resblock_norm, key):
        key = re.sub(r"\.weight$", ".gamma", re.sub(r"\.bias$", ".beta", key))
    return re.sub(r"embedding\.weight$", "embedding.embedding_table", key)


def test_ckpt_uses_mindspore_names(model_dir, ckpt):
    single = sf.diffusers_to_single_file(model_dir)
    records = [r.tag for r in iter_records(ckpt)]
    assert records == [_mindone_rule(k) for k in single]  # every name as MindONE names it, in sgm order
    names = set(records)
    for name in ("model.diffusion_model.input_blocks.1.0.in_layers.0.gamma",
                 "model.diffusion_model.middle_block.2.out_layers.0.beta",
                 "model.diffusion_model.input_blocks.3.1.norm.gamma",
                 "model.diffusion_model.middle_block.1.transformer_blocks.0.norm3.beta",
                 "model.diffusion_model.out.0.gamma",
                 "first_stage_model.decoder.up.0.block.0.norm1.gamma",
                 "first_stage_model.encoder.mid.attn_1.norm.beta",
                 "first_stage_model.encoder.norm_out.gamma",
                 CLIP_L + "embeddings.token_embedding.embedding_table",
                 CLIP_L + "embeddings.position_embedding.embedding_table",
                 CLIP_L + "encoder.layers.0.layer_norm1.gamma",
                 CLIP_L + "final_layer_norm.beta",
                 OPEN_CLIP + "token_embedding.embedding_table",
                 OPEN_CLIP + "transformer.resblocks.0.ln_1.gamma",
                 OPEN_CLIP + "ln_final.beta",
                 OPEN_CLIP + "positional_embedding",  # bare parameters keep their names
                 OPEN_CLIP + "text_projection",
                 OPEN_CLIP + "transformer.resblocks.0.attn.in_proj_weight",
                 "model.diffusion_model.out.2.weight",  # convolutions and dense layers keep weight/bias
                 "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
                 "first_stage_model.encoder.mid.attn_1.q.bias"):  # fmt: skip
        assert name in names, name
    assert not any(re.search(r"(norm\d?|norm_out|ln_\w+|embedding)\.(weight|bias)$", n) for n in names)
    te2 = load_file(model_dir / "text_encoder_2" / "model.safetensors")
    assert torch.equal(load_ckpt(ckpt).tensors[OPEN_CLIP + "text_projection"], te2["text_projection.weight"].T)


def test_one_table_both_directions(model_dir):
    single = sf.diffusers_to_single_file(model_dir)
    named = ms.to_mindspore_names(single)
    assert sum(a != b for a, b in zip(single, named)) > 50
    back = ms.from_mindspore_names(named)
    assert list(back) == list(single) and all(back[k] is single[k] for k in single)


def test_reader_accepts_the_key_list_typo_for_clip_l_token_embedding():
    typo = "conditioner.embedders.1.model.token_embedding..embedding_table"  # mindspore_key_base.yaml
    t = torch.zeros(3, 2)
    assert ms.from_mindspore_names({typo: t}) == {CLIP_L + "embeddings.token_embedding.weight": t}
    regular = CLIP_L + "embeddings.token_embedding.embedding_table"
    assert set(ms.from_mindspore_names({typo: t, regular: t})) == {
        CLIP_L + "embeddings.token_embedding.weight",
        typo.replace("embedding_table", "weight"),
    }
    with pytest.raises(UserError, match="both named"):
        ms.from_mindspore_names({"a.norm.gamma": t, "a.norm.weight": t})


def test_help_and_bad_input_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "sdxl-to-mindone", "--help"])
    assert exit_.value.code == 0 and "MindONE full-model .ckpt" in capsys.readouterr().out
    missing = tmp_path / "no_such_model"
    for argv, needle in (([str(missing), str(tmp_path / "o.ckpt")], str(missing)),
                         ([str(tmp_path), str(tmp_path / "o.ckpt")], "model_index.json"),
                         (["tiny:sdxl", str(tmp_path / "o.safetensors")], "end OUT with .ckpt")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(["convert", "sdxl-to-mindone", *argv])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert needle in err
    assert not (tmp_path / "o.ckpt").exists()
