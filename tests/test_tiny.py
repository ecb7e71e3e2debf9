"""Tiny seeded pipelines and offline tokenizers: ids, determinism, save/reload/run, refusals, cache and CLI."""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from diffusers_npu import tiny
from diffusers_npu.errors import UserError

SIZE = 64  # px for the SD family: a 32x32 latent, the UNet's sample_size


@pytest.fixture(scope="session")
def clip_tok():
    return tiny.clip_tokenizer()


@pytest.fixture(scope="session")
def built():
    """``built(kind, seed)``: each pipeline built once per session, after a global seed the build must ignore."""
    cache: dict[tuple[str, int], diffusers.DiffusionPipeline] = {}

    def get(kind: str, seed: int = 0) -> diffusers.DiffusionPipeline:
        if (kind, seed) not in cache:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(987_654 + 31 * seed)  # unrelated global state: weights must not depend on it
                cache[kind, seed] = tiny.build_pipeline(kind, seed=seed)
        return cache[kind, seed]

    return get


@pytest.fixture(scope="session")
def saved(tmp_path_factory, built):
    """``saved(kind)``: (directory, reloaded pipeline) of the seed-0 model, written once with ``save_tiny``."""
    cache: dict[str, tuple[Path, diffusers.DiffusionPipeline]] = {}

    def get(kind: str) -> tuple[Path, diffusers.DiffusionPipeline]:
        if kind not in cache:
            out = tiny.save_tiny(kind, tmp_path_factory.mktemp("saved") / kind, seed=0)
            pipe = diffusers.DiffusionPipeline.from_pretrained(out)
            pipe.set_progress_bar_config(disable=True)
            cache[kind] = out, pipe
        return cache[kind]

    return get


def _modules(pipe: diffusers.DiffusionPipeline) -> dict[str, torch.nn.Module]:
    return {name: c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


def _state(pipe: diffusers.DiffusionPipeline) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, m in _modules(pipe).items() for k, v in m.state_dict().items()}


def _assert_same_weights(a: diffusers.DiffusionPipeline, b: diffusers.DiffusionPipeline) -> None:
    sa, sb = _state(a), _state(b)
    assert sa, "pipeline has no weights"
    assert sa.keys() == sb.keys()
    differing = [k for k in sa if sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


# ---- tokenizers ----------------------------------------------------------------------------------------------


def _ids(tok, text: str) -> list[int]:
    """``text`` tokenized the way OpenAI CLIP's simple_tokenizer.py does, with ``tok``'s vocabulary: lower-cased,
    split on spaces (the test texts have no punctuation), each word one whole ``</w>`` token or its characters."""
    vocab = tok.get_vocab()
    ids = [tok.bos_token_id]
    for word in text.lower().split():
        whole = vocab.get(word + "</w>")
        ids += [whole] if whole is not None else [vocab[c] for c in word[:-1]] + [vocab[word[-1] + "</w>"]]
    return ids + [tok.eos_token_id]


def test_clip_tokenizer_layout_special_ids_and_whole_words(clip_tok):
    vocab = clip_tok.get_vocab()
    n = len(clip_tok)
    assert 512 < n < 1000  # 256 bytes, 256 bytes + </w>, the word merges, 2 specials
    assert (clip_tok.bos_token_id, clip_tok.eos_token_id, clip_tok.pad_token_id) == (n - 2, n - 1, n - 1)
    assert vocab["a"] == 64 and vocab["a</w>"] == 256 + 64  # the byte table's order, as CLIP's
    for word in tiny._CLIP_WORDS:
        assert len(clip_tok(word).input_ids) == 3, word  # start, the word, end
    text = "a photo of sks dog in a bucket"
    assert clip_tok(text).input_ids == _ids(clip_tok, text)
    assert clip_tok("A Photo of a CAT").input_ids == _ids(clip_tok, "a photo of a cat")  # CLIP lowercases
    assert clip_tok("a zebra").input_ids == _ids(clip_tok, "a zebra")  # unknown word: characters
    for odd in ("a photo of a cat, 42!", "héllo wörld 猫"):  # any text round-trips through the byte alphabet
        decoded = clip_tok.decode(clip_tok(odd).input_ids, skip_special_tokens=True)
        assert decoded.replace(" ", "") == odd.replace(" ", "")


def test_clip_tokenizer_fast_and_slow_agree(clip_tok, tmp_path):
    clip_tok.save_pretrained(tmp_path)
    fast = transformers.CLIPTokenizerFast.from_pretrained(tmp_path)
    for text in ("a red circle on a white background", "a zebra, 42!", "héllo wörld 猫"):
        assert fast(text).input_ids == clip_tok(text).input_ids, text


def test_clip_tokenizer_pads_and_truncates_to_model_max_length(clip_tok):
    cat_ids = _ids(clip_tok, "a photo of a cat")
    assert clip_tok.model_max_length == 77
    enc = clip_tok("a photo of a cat", padding="max_length", max_length=clip_tok.model_max_length)
    assert len(enc.input_ids) == 77
    assert enc.input_ids[:7] == cat_ids
    assert enc.input_ids[7:] == [clip_tok.pad_token_id] * 70
    assert sum(enc.attention_mask) == 7
    long = clip_tok(" ".join(["cat"] * 200), truncation=True, max_length=77).input_ids
    assert len(long) == 77 and long[0] == clip_tok.bos_token_id and long[-1] == clip_tok.eos_token_id
    assert tiny.clip_tokenizer(model_max_length=16).model_max_length == 16


def test_t5_tokenizer_special_ids_and_eos():
    tok = tiny.t5_tokenizer()
    assert len(tok) == 117
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok("a photo of a cat").input_ids
    assert ids[-1] == 1 and ids.count(1) == 1
    assert len(ids) == 6  # five whole-word pieces + eos
    padded = tok("a cat", padding="max_length", max_length=10).input_ids
    assert padded[:3] == tok("a cat").input_ids and padded[3:] == [0] * 7
    assert tiny.t5_tokenizer(model_max_length=16).model_max_length == 16


def test_t5_tokenizer_covers_every_ascii_prompt():
    tok = tiny.t5_tokenizer()
    rng = random.Random(0)
    alphabet = string.printable  # letters, digits, punctuation and whitespace
    prompts = [alphabet, "Zebra-42 @ (sunset)!"] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(50)
    ]
    for prompt in prompts:
        ids = tok(prompt).input_ids
        assert tok.unk_token_id not in ids, prompt
        assert ids[-1] == tok.eos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == " ".join(prompt.split())


# ---- pipelines: determinism, RNG hygiene, save/reload, inference ----------------------------------------------


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_build_is_seeded_and_leaves_caller_rng_alone(kind, built):
    reference = built(kind, 0)  # built under a different global seed than the build below
    torch.manual_seed(1234)
    expected = torch.rand(8)
    torch.manual_seed(1234)
    before = torch.rand(4)
    again = tiny.build_pipeline(kind, seed=0)
    after = torch.rand(4)
    assert torch.equal(torch.cat([before, after]), expected), "build_pipeline changed the caller's torch RNG"

    assert type(again) is type(reference)
    _assert_same_weights(again, reference)
    for name, module in _modules(again).items():
        params = list(module.parameters())
        assert params, name
        assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params), name


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_other_seed_gives_other_weights_in_every_component(kind, built):
    a, b = _modules(built(kind, 0)), _modules(built(kind, 1))
    assert a.keys() == b.keys()
    for name in a:
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys()
        assert any(not torch.equal(sa[k], sb[k]) for k in sa), f"{name} identical for seeds 0 and 1"


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_saved_model_reloads_as_same_class_and_weights(kind, built, saved):
    out, reloaded = saved(kind)
    original = built(kind, 0)
    assert type(reloaded) is type(original)
    assert json.loads((out / tiny.MARKER).read_text()) == {"kind": kind, "seed": 0, "version": tiny.CACHE_VERSION}
    assert {n: type(c) for n, c in reloaded.components.items()} == {n: type(c) for n, c in original.components.items()}
    _assert_same_weights(reloaded, original)
    assert list(out.rglob("*.safetensors")) and not list(out.rglob("*.bin"))


def _image(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _mask(size: int) -> Image.Image:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, size // 2 :] = 255
    return Image.fromarray(mask)


_RUNS = {  # kind -> (call kwargs, expected (H, W))
    "sd15": (dict(height=SIZE, width=SIZE), (SIZE, SIZE)),
    "sd21": (dict(height=SIZE, width=SIZE), (SIZE, SIZE)),
    "sdxl": (dict(height=SIZE, width=SIZE), (SIZE, SIZE)),
    "sdxl-refiner": (dict(image=_image(SIZE), strength=0.5), (SIZE, SIZE)),
    "sd-inpaint": (dict(image=_image(SIZE), mask_image=_mask(SIZE), height=SIZE, width=SIZE), (SIZE, SIZE)),
    "sd-depth": (dict(image=_image(SIZE)), (SIZE, SIZE)),
    "ddpm": ({}, (32, 32)),
    "flux": (dict(height=32, width=32, max_sequence_length=16), (32, 32)),
}


def test_every_kind_has_an_inference_case():
    assert set(_RUNS) == set(tiny.KINDS)


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_reloaded_pipeline_runs(kind, saved):
    _, pipe = saved(kind)
    kwargs, (h, w) = _RUNS[kind]
    if kind != "ddpm":
        kwargs = dict(kwargs, prompt="a photo of a cat")
    images = pipe(**kwargs, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, h, w, 3)
    assert np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0


# ---- configuration facts --------------------------------------------------------------------------------------


def test_sd15_and_sd21_schedulers(saved):
    assert saved("sd15")[1].scheduler.config.prediction_type == "epsilon"
    sd21 = saved("sd21")[1]
    assert sd21.scheduler.config.prediction_type == "v_prediction"
    assert sd21.unet.config.upcast_attention is True


def test_sd15_text_encoder_vocab_matches_tokenizer(saved):
    pipe = saved("sd15")[1]
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer) == len(tiny.clip_tokenizer())
    assert pipe.text_encoder.config.max_position_embeddings == pipe.tokenizer.model_max_length == 77
    assert pipe.text_encoder.config.eos_token_id == pipe.tokenizer.eos_token_id
    assert pipe.tokenizer("a photo of a cat").input_ids == _ids(pipe.tokenizer, "a photo of a cat")  # reloaded too


def test_sdxl_cross_attention_is_both_text_encoders(saved, built):
    pipe = saved("sdxl")[1]
    hidden = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert pipe.unet.config.cross_attention_dim == 64 == hidden
    assert pipe.tokenizer is not pipe.tokenizer_2
    fresh = built("sdxl", 0)
    assert fresh.tokenizer is not fresh.tokenizer_2
    e1 = fresh.text_encoder.get_input_embeddings().weight
    e2 = fresh.text_encoder_2.get_input_embeddings().weight
    assert not torch.equal(e1, e2), "SDXL's two text encoders start from identical embeddings"


def test_refiner_has_only_the_second_text_encoder(saved):
    pipe = saved("sdxl-refiner")[1]
    assert pipe.text_encoder is None and pipe.tokenizer is None
    assert pipe.text_encoder_2 is not None and pipe.config.requires_aesthetics_score is True
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder_2.config.hidden_size


def test_inpaint_and_depth_unet_input_channels(saved):
    assert saved("sd-inpaint")[1].unet.config.in_channels == 9
    assert saved("sd-depth")[1].unet.config.in_channels == 5


def test_flux_transformer_has_guidance_embeds(saved):
    pipe = saved("flux")[1]
    assert pipe.transformer.config.guidance_embeds is True
    assert pipe.text_encoder_2.config.vocab_size == len(pipe.tokenizer_2)


# ---- save_tiny refusals and replacement ------------------------------------------------------------------------


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_save_tiny_refuses_foreign_nonempty_dir_untouched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = _snapshot(out)
    with pytest.raises(UserError, match="neither empty nor a tiny 'ddpm' model"):
        tiny.save_tiny("ddpm", out)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary siblings left behind


def test_save_tiny_refuses_a_tiny_model_of_another_kind(tmp_path):
    out = tiny.save_tiny("ddpm", tmp_path / "m")
    before = _snapshot(out)
    with pytest.raises(UserError, match="tiny 'sd15' model"):
        tiny.save_tiny("sd15", out)
    assert _snapshot(out) == before


def test_save_tiny_refuses_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError):
        tiny.save_tiny("ddpm", target)
    assert target.read_text() == "x"


def test_save_tiny_accepts_empty_dir_and_replaces_same_kind(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    assert tiny.save_tiny("ddpm", out, seed=0) == out
    first = diffusers.DiffusionPipeline.from_pretrained(out)
    assert tiny.save_tiny("ddpm", out, seed=1) == out
    assert json.loads((out / tiny.MARKER).read_text())["seed"] == 1
    second = diffusers.DiffusionPipeline.from_pretrained(out)
    assert not torch.equal(first.unet.conv_in.weight, second.unet.conv_in.weight)
    _assert_same_weights(second, tiny.build_pipeline("ddpm", seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # the old copy and the build dir are gone


def test_save_tiny_keeps_old_copy_when_build_fails(tmp_path, monkeypatch):
    out = tiny.save_tiny("ddpm", tmp_path / "m")
    before = _snapshot(out)

    def boom(*args, **kwargs):
        raise RuntimeError("build failed")

    monkeypatch.setattr(tiny, "_write", boom)
    with pytest.raises(RuntimeError, match="build failed"):
        tiny.save_tiny("ddpm", out)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_save_tiny_restores_old_copy_when_final_rename_fails(tmp_path, monkeypatch):
    """The old model is moved aside before the new one is renamed in: a failure there must put it back."""
    out = tiny.save_tiny("ddpm", tmp_path / "m")
    before = _snapshot(out)
    real_rename = os.rename

    def failing_rename(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".m.tmp-"):
            raise OSError("disk full")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(tiny.os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk full"):
        tiny.save_tiny("ddpm", out, seed=1)
    monkeypatch.undo()
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_save_tiny_creates_missing_parents(tmp_path):
    out = tiny.save_tiny("ddpm", tmp_path / "a" / "b" / "m")
    assert (out / "model_index.json").is_file() and (out / tiny.MARKER).is_file()


@pytest.mark.parametrize(
    "call",
    [
        lambda tmp: tiny.save_tiny("nope", tmp / "m"),
        lambda tmp: tiny.build_pipeline("nope"),
        lambda tmp: tiny.tiny_model_path("nope"),
    ],
    ids=["save_tiny", "build_pipeline", "tiny_model_path"],
)
def test_unknown_kind_lists_the_kinds(call, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSERS_NPU_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="unknown tiny model kind 'nope'") as info:
        call(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert all(kind in message for kind in tiny.KINDS)
    assert not (tmp_path / "m").exists() and not (tmp_path / "cache").exists()


# ---- tiny_model_path cache -------------------------------------------------------------------------------------


def test_cache_dir_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFUSERS_NPU_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tiny.cache_dir() == tmp_path / ".cache" / "diffusers_npu"
    monkeypatch.setenv("DIFFUSERS_NPU_CACHE", str(tmp_path / "c"))
    assert tiny.cache_dir() == tmp_path / "c"


def test_tiny_model_path_builds_once_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSERS_NPU_CACHE", str(tmp_path))
    calls = []
    real_write = tiny._write

    def counting_write(kind, seed, out):
        if calls:
            raise AssertionError("rebuilt a cached tiny model")
        calls.append((kind, seed))
        real_write(kind, seed, out)

    monkeypatch.setattr(tiny, "_write", counting_write)
    path = tiny.tiny_model_path("ddpm")
    assert path == tmp_path / "tiny" / f"ddpm-{tiny.CACHE_VERSION}"
    assert calls == [("ddpm", 0)]
    assert json.loads((path / tiny.MARKER).read_text())["kind"] == "ddpm"
    assert tiny.tiny_model_path("ddpm") == path  # _write would raise if it rebuilt
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary dirs left
    pipe = diffusers.DiffusionPipeline.from_pretrained(path)
    assert isinstance(pipe, diffusers.DDPMPipeline)


def test_tiny_model_path_keeps_the_race_winner(tmp_path, monkeypatch):
    """Another process publishes first: its copy stays, ours is discarded, no error."""
    monkeypatch.setenv("DIFFUSERS_NPU_CACHE", str(tmp_path))
    final = tmp_path / "tiny" / f"ddpm-{tiny.CACHE_VERSION}"
    real_write = tiny._write

    def write_and_lose(kind, seed, out):
        real_write(kind, seed, out)
        real_write(kind, 1, final)  # the "other process", with seed 1 to tell the copies apart

    monkeypatch.setattr(tiny, "_write", write_and_lose)
    assert tiny.tiny_model_path("ddpm") == final
    assert json.loads((final / tiny.MARKER).read_text())["seed"] == 1
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]


# ---- CLI -------------------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "diffusers_npu.tiny", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_writes_model_and_prints_path(tmp_path):
    out = tmp_path / "cli-ddpm"
    proc = _cli(str(out), "--kind", "ddpm")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert json.loads((out / tiny.MARKER).read_text())["kind"] == "ddpm"
    assert isinstance(diffusers.DiffusionPipeline.from_pretrained(out), diffusers.DDPMPipeline)


def test_cli_unknown_kind_fails_with_one_error_line(tmp_path):
    proc = _cli(str(tmp_path / "x"), "--kind", "nope")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "nope" in errors[0], proc.stderr
    assert not (tmp_path / "x").exists()


def test_cli_refusal_is_one_line_without_traceback(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("keep")
    with pytest.raises(SystemExit) as info:
        tiny.main([str(tmp_path), "--kind", "ddpm"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "neither empty nor a tiny 'ddpm' model" in captured.err
    assert (tmp_path / "keep.txt").read_text() == "keep"


def test_cache_entry_without_marker_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSERS_NPU_CACHE", str(tmp_path))
    broken = tmp_path / "tiny" / f"ddpm-{tiny.CACHE_VERSION}"
    broken.mkdir(parents=True)
    (broken / "leftover.txt").write_text("x")
    with pytest.raises(UserError, match="not a complete tiny model; delete it"):
        tiny.tiny_model_path("ddpm")
    assert (broken / "leftover.txt").read_text() == "x"
