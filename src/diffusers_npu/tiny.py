"""Tiny seeded random SD/SDXL/FLUX pipelines in diffusers' own classes, and offline tokenizers.

A saved tiny pipeline is an ordinary ``save_pretrained`` directory, so any script takes it as a model path
(tests, and the offline default from ``tiny_model_path``). Sizes follow diffusers' ``get_dummy_components``
(tests/pipelines/stable_diffusion/test_stable_diffusion.py and its SDXL/FLUX siblings):

- UNet: ``block_out_channels=(32, 64)``, ``layers_per_block=1``, 32 norm groups, ``sample_size=32``; attention
  in the 64-channel level and the mid block only, 4 heads of 16 (the attention kernel tests need several heads).
- VAE: 2 blocks ``(32, 64)``, so ``vae_scale_factor=2``: a 64x64 px image is a 32x32 latent.
- CLIP text encoder: 2 layers, hidden 32, 4 heads, a small CLIP-style BPE vocabulary built in code (``clip_tokenizer``).
  SDXL concatenates two of them: ``cross_attention_dim=64``.
- FLUX: 1 double + 1 single block, 2 heads of 16, VAE with 16 latent channels; T5 encoder 2 layers, d_model 32.
- DDPM: pixel-space ``UNet2DModel`` (32, 64), 32x32 px.

On disk: sd15/sd21/inpaint/depth 16-17 MB, sdxl 28 MB, refiner 18 MB, flux 13 MB, ddpm 3 MB. One 64x64 px
denoising step takes milliseconds on CPU.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import shutil
import string
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import diffusers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from diffusers_npu.errors import UserError, cli_entry

# Bump when any size or config below changes: cached models live under tiny/<kind>-<CACHE_VERSION>.
CACHE_VERSION = "v2"
# Written last into every saved tiny model: it marks a complete directory that save_tiny may replace.
MARKER = "diffusers_npu_tiny.json"
M = TypeVar("M")

# One seed per component slot, so changing one component's config never shifts another's weights, and SDXL's
# two text encoders do not start from identical embeddings.
_SLOTS = ("denoiser", "vae", "text_encoder", "text_encoder_2", "depth_estimator")


def _seeded(seed: int, slot: str, make: Callable[[], M]) -> M:
    torch.manual_seed(seed * len(_SLOTS) + _SLOTS.index(slot))
    return make()


# ---- tokenizers ----------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table, in OpenAI CLIP's order (openai/CLIP clip/simple_tokenizer.py)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    # The 68 whitespace/control bytes move to 256.., where the BPE code does not choke on them.
    rest = [b for b in range(256) if b not in printable]
    return dict(zip(printable + rest, map(chr, printable + list(range(256, 256 + len(rest))))))


# Whole-word tokens of the tiny CLIP vocabulary: the words of the package's own prompts (quickstart shapes,
# DreamBooth's "sks", test captions), so they give short sequences. Any other text still tokenizes: the byte
# alphabet is complete, as in every byte-level BPE (Radford et al. 2019, "Language Models are Unsupervised
# Multitask Learners", section 2.2).
_CLIP_WORDS = (
    "a an the of in on with and photo picture painting cat dog man woman car tree house sky bucket sks shape "
    "red blue yellow green white black circle square triangle background"
).split()


def _word_merges(word: str) -> list[str]:
    """BPE merges that join ``word`` left to right into one end-of-word token: ``r e``, ``re d</w>``."""
    merges, head = [], word[0]
    for i, char in enumerate(word[1:], start=2):
        tail = char + ("</w>" if i == len(word) else "")
        merges.append(f"{head} {tail}")
        head += tail
    return merges


@functools.lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], tuple[str, ...]]:
    """(vocab, merges) in the layout of OpenAI CLIP's ``bpe_simple_vocab_16e6`` (openai/CLIP
    clip/simple_tokenizer.py): the 256 byte characters, the same with ``</w>``, one token per merge, then
    ``<|startoftext|>`` and ``<|endoftext|>`` last. Built in code, so nothing is downloaded or shipped."""
    # Longest words first: their merges rank first, so a shorter word's merge ("a n</w>") cannot split them.
    words = sorted(_CLIP_WORDS, key=len, reverse=True)
    merges = tuple(dict.fromkeys(m for word in words for m in _word_merges(word)))
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(model_max_length: int = 77) -> transformers.CLIPTokenizer:
    """A small CLIP BPE tokenizer (about 700 tokens) with CLIP's text rules (lower-casing, CLIP's
    pre-tokenizer, ``</w>`` word ends, start/end tokens, end token as padding). Not CLIP's 49,408-token
    vocabulary: real models bring their own tokenizer; the tiny ones need only a consistent one."""
    vocab, merges = _clip_bpe()
    with tempfile.TemporaryDirectory() as tmp:
        # Loading from files, not in-memory dicts, works on every transformers version we support.
        Path(tmp, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        Path(tmp, "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return transformers.CLIPTokenizer.from_pretrained(tmp, model_max_length=model_max_length)


# Not the real 32k SentencePiece T5 vocabulary: T5's special ids, every printable ASCII character (so any ASCII
# prompt tokenizes) and a few whole words (so common prompts give short sequences).
_T5_WORDS = "a an the of in on with and photo picture painting cat dog man woman car tree house sky".split()


def t5_tokenizer(model_max_length: int = 512) -> transformers.T5TokenizerFast:
    """A tiny (117-token) T5-style Unigram tokenizer: pad 0, eos ``</s>`` 1 (appended), unk 2. Not T5's vocab."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("▁" + w, -1.0) for w in _T5_WORDS]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    # The pre-tokenizer, decoder and post-processor of transformers' own T5 tokenizer.
    metaspace = dict(replacement="▁", prepend_scheme="always")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(**metaspace)]
    )
    tok.decoder = decoders.Metaspace(**metaspace)
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    special = dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    return transformers.T5TokenizerFast(
        tokenizer_object=tok, extra_ids=0, model_max_length=model_max_length, **special
    )


# ---- component configs ---------------------------------------------------------------------------------------

# fmt: off
# SD1.x layout at dummy size, attention in the second level only (as diffusers' dummies), where
# ``attention_head_dim=4`` means 4 heads of 16: in SD1.x configs the legacy name counts heads.
_UNET = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, sample_size=32,
             in_channels=4, out_channels=4, cross_attention_dim=32, attention_head_dim=4,
             down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
             up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
# SD2.x: heads per block at a constant head size (real SD2: (5, 10, 20, 20) heads of 64), linear projections.
_SD2 = dict(attention_head_dim=(2, 4), use_linear_projection=True)
# SDXL: 6 micro-conditioning numbers (original size, crop, target size) x 8 + the pooled text embedding (32);
# the refiner has 5 (aesthetic score instead of target size) and only text_encoder_2. As diffusers' SDXL dummies.
_SDXL = dict(_SD2, addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 2))
_UNET_BY_KIND: dict[str, dict[str, Any]] = {
    "sd15": {},
    "sd21": dict(_SD2, upcast_attention=True),  # SD2.1-v overflows fp16 attention without the upcast
    "sd-inpaint": dict(in_channels=9),  # noisy latents 4 + mask 1 + masked-image latents 4
    "sd-depth": dict(_SD2, in_channels=5),  # noisy latents 4 + depth 1; SD2-depth is an SD2 model
    "sdxl": dict(_SDXL, cross_attention_dim=64, projection_class_embeddings_input_dim=6 * 8 + 32),
    "sdxl-refiner": dict(_SDXL, cross_attention_dim=32, projection_class_embeddings_input_dim=5 * 8 + 32),
}
_VAE = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, sample_size=64,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
# Plain-ViT DPT at 32x32 px: diffusers' depth dummy is the hybrid DPT, whose BiT ResNet backbone is far larger.
_DPT = dict(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=37, backbone_out_indices=(0, 1, 2, 3), neck_hidden_sizes=(16, 16, 32, 32),
            fusion_hidden_size=16)
# Pixel-space DDPM: in UNet2DModel ``attention_head_dim`` really is the head size (4 heads of 16 at 64 channels).
_DDPM_UNET = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, sample_size=32,
                  attention_head_dim=16,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
# FLUX.1-dev layout: 16 latent channels packed 2x2 into 64 transformer channels, guidance embedding. The rope
# axes sum to the head size, as (16, 56, 56) sums to 128; pooled_projection_dim is CLIP's hidden size.
_FLUX = dict(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
             joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
_FLUX_VAE = dict(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                 scaling_factor=0.3611, shift_factor=0.1159)
# T5 v1.1 (gated-gelu) like FLUX's text_encoder_2, at dummy size.
_T5 = dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
           feed_forward_proj="gated-gelu")
# Real SD/SDXL training schedules (each model's scheduler config); diffusers' dummies use the same betas.
_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
_SD1_SCHEDULER = dict(_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
_SD2_SCHEDULER = dict(_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
_FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256)
# fmt: on


def _clip(seed: int, slot: str, tok: transformers.CLIPTokenizer, projection: bool = False) -> torch.nn.Module:
    """A CLIP text encoder whose vocabulary and special ids come from ``tok``, so they cannot disagree."""
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = transformers.CLIPTextConfig(
        **_CLIP, **ids, vocab_size=len(tok), max_position_embeddings=tok.model_max_length
    )
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return _seeded(seed, slot, lambda: cls(config))


def _sd_parts(kind: str, seed: int, vae: dict[str, Any] | None = None) -> dict[str, Any]:
    """VAE, one CLIP text encoder + tokenizer and the UNet of ``kind``: what every SD-family pipeline takes."""
    tok = clip_tokenizer()
    return dict(
        vae=_seeded(seed, "vae", lambda: diffusers.AutoencoderKL(**_VAE, **(vae or {}))),
        text_encoder=_clip(seed, "text_encoder", tok),
        tokenizer=tok,
        unet=_seeded(seed, "denoiser", lambda: diffusers.UNet2DConditionModel(**{**_UNET, **_UNET_BY_KIND[kind]})),
    )


# ---- pipelines -----------------------------------------------------------------------------------------------


def _sd(kind: str, seed: int) -> diffusers.DiffusionPipeline:
    """SD1.5 / SD2.1 / SD1.5-inpainting: no safety checker, no feature extractor."""
    cls = diffusers.StableDiffusionInpaintPipeline if kind == "sd-inpaint" else diffusers.StableDiffusionPipeline
    if kind == "sd21":  # SD2.1 (768-v) predicts v
        scheduler = diffusers.DDIMScheduler(**_SD2_SCHEDULER, prediction_type="v_prediction")
    else:
        scheduler = diffusers.PNDMScheduler(**_SD1_SCHEDULER)
    parts = _sd_parts(kind, seed)
    return cls(
        **parts, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def _sd_depth(seed: int) -> diffusers.DiffusionPipeline:
    """SD2-depth: the depth estimator and its (PIL) image processor are required components."""
    # transformers 5 resolves ``DPTImageProcessor`` to a torchvision class and calls the PIL one ``...Pil``.
    processor = getattr(transformers, "DPTImageProcessorPil", None) or transformers.DPTImageProcessor
    depth = _seeded(
        seed, "depth_estimator", lambda: transformers.DPTForDepthEstimation(transformers.DPTConfig(**_DPT))
    )
    return diffusers.StableDiffusionDepth2ImgPipeline(
        **_sd_parts("sd-depth", seed),
        scheduler=diffusers.DDIMScheduler(**_SD2_SCHEDULER),
        depth_estimator=depth,
        feature_extractor=processor(size={"height": 32, "width": 32}),
    )


def _sdxl(kind: str, seed: int) -> diffusers.DiffusionPipeline:
    """SDXL base (two CLIP text encoders) or refiner (text_encoder_2 only, aesthetic-score conditioning)."""
    parts = _sd_parts(kind, seed, vae=dict(scaling_factor=0.13025))  # the SDXL VAE's scaling factor
    tok_2 = clip_tokenizer()  # its own instance: added tokens (textual inversion) must not leak across
    parts.update(text_encoder_2=_clip(seed, "text_encoder_2", tok_2, projection=True), tokenizer_2=tok_2)
    parts["scheduler"] = diffusers.EulerDiscreteScheduler(**_BETAS, steps_offset=1, timestep_spacing="leading")
    if kind == "sdxl":
        return diffusers.StableDiffusionXLPipeline(**parts)
    parts.update(text_encoder=None, tokenizer=None)
    # As the real refiner's model_index.json.
    return diffusers.StableDiffusionXLImg2ImgPipeline(
        **parts, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False
    )


def _ddpm(seed: int) -> diffusers.DiffusionPipeline:
    """Unconditional pixel-space DDPM, 32x32 px."""
    unet = _seeded(seed, "denoiser", lambda: diffusers.UNet2DModel(**_DDPM_UNET))
    return diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000))


def _flux(seed: int) -> diffusers.DiffusionPipeline:
    """FLUX.1-dev at dummy size: CLIP (pooled) + tiny-vocabulary T5, 16-channel VAE, flow-matching scheduler."""
    tok, tok_2 = clip_tokenizer(), t5_tokenizer()
    t5 = transformers.T5Config(**_T5, vocab_size=len(tok_2), pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**_FLUX_SCHEDULER),
        vae=_seeded(seed, "vae", lambda: diffusers.AutoencoderKL(**_VAE, **_FLUX_VAE)),
        text_encoder=_clip(seed, "text_encoder", tok),
        tokenizer=tok,
        text_encoder_2=_seeded(seed, "text_encoder_2", lambda: transformers.T5EncoderModel(t5)),
        tokenizer_2=tok_2,
        transformer=_seeded(seed, "denoiser", lambda: diffusers.FluxTransformer2DModel(**_FLUX)),
    )


_BUILDERS: dict[str, Callable[[int], diffusers.DiffusionPipeline]] = {
    "sd15": functools.partial(_sd, "sd15"),
    "sd21": functools.partial(_sd, "sd21"),
    "sdxl": functools.partial(_sdxl, "sdxl"),
    "sdxl-refiner": functools.partial(_sdxl, "sdxl-refiner"),
    "sd-inpaint": functools.partial(_sd, "sd-inpaint"),
    "sd-depth": _sd_depth,
    "ddpm": _ddpm,
    "flux": _flux,
}
KINDS: tuple[str, ...] = tuple(_BUILDERS)


# ---- public API ----------------------------------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in _BUILDERS:
        raise UserError(f"unknown tiny model kind {kind!r}; choose one of: {', '.join(KINDS)}")


def build_pipeline(kind: str, seed: int = 0) -> diffusers.DiffusionPipeline:
    """Build the tiny random pipeline ``kind`` (one of ``KINDS``), fp32 on CPU; same seed, same weights.

    The caller's torch RNG state is left untouched. Raises ``UserError`` for an unknown kind.
    """
    _check_kind(kind)
    with torch.random.fork_rng(devices=[]):  # the CPU generator only: components are built on CPU
        return _BUILDERS[kind](seed)


def _read_marker(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _write(kind: str, seed: int, out: Path) -> None:
    build_pipeline(kind, seed).save_pretrained(out, safe_serialization=True)
    (out / MARKER).write_text(json.dumps({"kind": kind, "seed": seed, "version": CACHE_VERSION}) + "\n")


def _sibling(path: Path, tag: str) -> Path:
    """A fresh name beside ``path`` (same filesystem, so rename is atomic); mkdir, unlike mkdtemp, honours umask."""
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:12]}")


def save_tiny(kind: str, out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """Save the tiny pipeline ``kind`` to ``out_dir`` with ``save_pretrained`` (safetensors); return its path.

    Built in a sibling temporary directory and renamed into place, so ``out_dir`` is never half-written. An
    existing ``out_dir`` is replaced only if it is empty or a tiny model of the same kind, else ``UserError``.
    """
    _check_kind(kind)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not (out.is_dir() and (_read_marker(out).get("kind") == kind or not any(out.iterdir()))):
        raise UserError(f"{out} exists and is neither empty nor a tiny {kind!r} model; choose another OUT_DIR")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _sibling(out, "tmp"), _sibling(out, "old")
    tmp.mkdir()
    try:
        _write(kind, seed, tmp)
        if out.is_dir() and any(out.iterdir()):
            os.rename(out, old)  # rename() replaces only an empty directory: move the old model aside first
        os.rename(tmp, out)
    except BaseException:
        if old.exists() and not out.exists():
            os.rename(old, out)  # never lose the previous good copy
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` to ``final``; if another process got there first, keep the winner's copy."""
    try:
        os.rename(tmp, final)  # atomic; replaces ``final`` only if it is an empty directory
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        if not _read_marker(final):
            raise UserError(f"{final} exists but is not a complete tiny model; delete it and run again") from None


def cache_dir() -> Path:
    """``$DIFFUSERS_NPU_CACHE``, by default ``~/.cache/diffusers_npu``."""
    return Path(os.environ.get("DIFFUSERS_NPU_CACHE") or "~/.cache/diffusers_npu").expanduser()


def tiny_model_path(kind: str) -> Path:
    """The offline default model of ``kind`` (seed 0): ``<cache_dir()>/tiny/<kind>-<CACHE_VERSION>``, built on first use.

    Safe when processes race: each builds in its own temporary directory and the first rename wins.
    """
    _check_kind(kind)
    final = cache_dir() / "tiny" / f"{kind}-{CACHE_VERSION}"
    if _read_marker(final).get("kind") == kind:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(final, "tmp")
    tmp.mkdir()
    try:
        _write(kind, 0, tmp)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already unless this process lost the race
    return final


# ---- CLI -----------------------------------------------------------------------------------------------------


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """``python -m diffusers_npu.tiny OUT_DIR --kind sd15``: save one tiny model and print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m diffusers_npu.tiny",
        description="Write a tiny random diffusers pipeline (offline, seeded) that any script loads as a model path.",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write: new, empty, or a tiny model of this kind")
    parser.add_argument("--kind", choices=KINDS, default="sd15", help="pipeline family (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default: %(default)s)")
    args = parser.parse_args(argv)
    print(save_tiny(args.kind, args.out_dir, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
