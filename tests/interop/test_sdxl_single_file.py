"""SDXL diffusers folder <-> original single file: exact round trip, the text_projection transpose, sgm names."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusers_npu import tiny
from diffusers_npu.cli import main
from diffusers_npu.convert import sdxl_single_file as sf
from diffusers_npu.errors import UserError

TE2 = "conditioner.embedders.1.model."


@pytest.fixture(scope="module")
def model_dir():
    return tiny.tiny_model_path("sdxl")


@pytest.fixture(scope="module")
def single(model_dir):
    return sf.diffusers_to_single_file(model_dir)


def test_round_trip_diffusers_single_diffusers_is_exact(tmp_path, model_dir):
    single_path = tmp_path / "sdxl.safetensors"
    assert main(["convert", "sdxl-to-single-file", str(model_dir), str(single_path)]) == 0
    out = tmp_path / "back"
    assert main(["convert", "single-file-to-sdxl", str(single_path), str(out), "--config", str(model_dir)]) == 0
    for comp, weights in sf.WEIGHT_FILES.items():
        before, after = load_file(model_dir / comp / weights), load_file(out / comp / weights)
        assert before.keys() == after.keys(), comp
        for key, value in before.items():
            assert after[key].dtype == value.dtype and torch.equal(after[key], value), f"{comp}.{key}"
    assert (out / "model_index.json").read_text() == (model_dir / "model_index.json").read_text()
    assert (out / "tokenizer_2" / "tokenizer_config.json").is_file()
    assert not (out / tiny.MARKER).exists()
    from diffusers import StableDiffusionXLPipeline

    reloaded = StableDiffusionXLPipeline.from_pretrained(out)  # a complete, loadable diffusers folder
    assert torch.equal(reloaded.text_encoder_2.text_projection.weight, load_file(
        model_dir / "text_encoder_2" / "model.safetensors")["text_projection.weight"])  # fmt: skip


def test_text_projection_is_transposed_and_qkv_fused(model_dir, single):
    te2 = load_file(model_dir / "text_encoder_2" / "model.safetensors")
    assert torch.equal(single[TE2 + "text_projection"], te2["text_projection.weight"].T)
    layer = "text_model.encoder.layers.1.self_attn."
    fused = torch.cat([te2[layer + f"{x}_proj.weight"] for x in "qkv"])
    assert torch.equal(single[TE2 + "transformer.resblocks.1.attn.in_proj_weight"], fused)
    assert TE2 + "positional_embedding" in single and TE2 + "ln_final.weight" in single
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in single


def test_vae_and_unet_use_sgm_names(single):
    vae_attn = single["first_stage_model.encoder.mid.attn_1.q.weight"]
    assert vae_attn.ndim == 4 and vae_attn.shape[2:] == (1, 1)  # 1x1 conv in sgm
    for key in ("first_stage_model.encoder.down.0.downsample.conv.weight",
                "first_stage_model.decoder.up.1.upsample.conv.weight",  # diffusers up_blocks.0 = sgm up.1
                "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
                "model.diffusion_model.input_blocks.2.0.op.weight",
                "model.diffusion_model.input_blocks.3.1.transformer_blocks.1.attn2.to_k.weight",
                "model.diffusion_model.output_blocks.1.2.conv.weight",
                "model.diffusion_model.label_emb.0.0.weight",
                "model.diffusion_model.out.0.weight"):  # fmt: skip
        assert key in single, key


def test_sdxl_base_unet_names_match_the_real_layout():
    """Names and shapes from MindONE's SDXL base key list (tools/model_conversion/mindspore_key_base.yaml, with
    MindSpore's gamma/beta read as weight/bias), on the real SDXL base UNet config built on the meta device.
    """
    from diffusers import UNet2DConditionModel

    config = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                  use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2816)  # fmt: skip
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    names = {k: tuple(v.shape) for k, v in sf.unet_to_sgm(unet.state_dict(), unet.config).items()}
    expected = {
        "label_emb.0.0.weight": (1280, 2816),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": (640, 2048),
        "input_blocks.6.0.op.weight": (640, 640, 3, 3),
        "input_blocks.7.1.transformer_blocks.0.ff.net.0.proj.weight": (10240, 1280),
        "middle_block.1.transformer_blocks.9.norm3.weight": (1280,),
        "output_blocks.5.1.proj_out.weight": (640, 640),
        "output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "output_blocks.6.0.in_layers.0.weight": (960,),
        "output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1),
        "out.0.weight": (320,),
        "out.2.weight": (4, 320, 3, 3),
    }
    assert {k: names.get(k) for k in expected} == expected
    assert not any(k.startswith("output_blocks.6.1") or k.startswith("output_blocks.8.2") for k in names)


def test_dropped_keys_are_listed_and_missing_keys_are_errors(tmp_path, model_dir, single, capsys):
    extra = {TE2 + "logit_scale": torch.tensor(4.6), "denoiser.sigmas": torch.ones(3)}
    components, dropped = sf.single_file_to_diffusers({**single, **extra}, model_dir)
    assert dropped == sorted(extra)
    path = tmp_path / "extra.safetensors"
    save_file({**single, **extra}, path)
    assert main(["convert", "single-file-to-sdxl", str(path), str(tmp_path / "o"), "--config", "tiny:sdxl"]) == 0
    assert "denoiser.sigmas" in capsys.readouterr().out

    partial = dict(single)
    del partial["model.diffusion_model.middle_block.1.proj_in.weight"]
    del partial[TE2 + "ln_final.bias"]
    with pytest.raises(UserError) as err:
        sf.single_file_to_diffusers(partial, model_dir)
    assert "unet.mid_block.attentions.0.proj_in.weight (missing)" in str(err.value)
    assert "text_encoder_2.text_model.final_layer_norm.bias (missing)" in str(err.value)


def test_shape_mismatch_is_an_error(model_dir, single):
    wrong = {**single, "first_stage_model.decoder.conv_out.bias": torch.zeros(4)}
    with pytest.raises(UserError, match=r"vae.decoder.conv_out.bias \[4\] != \[3\]"):
        sf.single_file_to_diffusers(wrong, model_dir)


def test_half_and_output_folder_must_be_new(tmp_path, model_dir):
    path = tmp_path / "half.safetensors"
    assert main(["convert", "sdxl-to-single-file", "tiny:sdxl", str(path), "--half"]) == 0
    assert {v.dtype for v in load_file(path).values()} == {torch.float16}
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        sf.save_diffusers_folder({}, model_dir, tmp_path / "busy")


def test_mindone_ckpt_with_mindspore_names_converts(tmp_path, model_dir, single):
    """A MindONE full SDXL .ckpt: sgm names, but norms' gamma/beta and embeddings' embedding_table."""
    from diffusers_npu.convert.mindspore_ckpt import save_ckpt

    renamed = {}
    for key, value in single.items():
        if ".norm" in key or ".ln_" in key or "in_layers.0." in key:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        renamed[key.replace("token_embedding.weight", "token_embedding.embedding_table")] = value
    assert sum(k.endswith(".gamma") for k in renamed) > 50
    ckpt = save_ckpt(tmp_path / "sd_xl_ms.ckpt", renamed)
    out = tmp_path / "from_ms"
    assert main(["convert", "single-file-to-sdxl", str(ckpt), str(out), "--config", str(model_dir)]) == 0
    for comp, weights in sf.WEIGHT_FILES.items():
        before, after = load_file(model_dir / comp / weights), load_file(out / comp / weights)
        assert before.keys() == after.keys() and all(torch.equal(after[k], v) for k, v in before.items()), comp
