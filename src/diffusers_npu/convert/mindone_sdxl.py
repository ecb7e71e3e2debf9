"""SDXL: diffusers folder <-> MindONE full-model ``.ckpt`` (MindONE's ``sd_xl_base_1.0_ms.ckpt`` layout).

A MindONE SDXL checkpoint (mindone ``examples/stable_diffusion_xl``) uses the sgm single-file layout
(``sdxl_single_file``: ``model.diffusion_model.``, ``first_stage_model.``, ``conditioner.embedders.N.``). Only the
parameter names of some MindSpore cells differ from PyTorch's:

- ``nn.LayerNorm`` / ``nn.GroupNorm``: ``gamma`` / ``beta`` instead of ``weight`` / ``bias``. These are the UNet's
  ResBlock norms (``in_layers.0``, ``out_layers.0``), SpatialTransformer ``norm``, transformer-block
  ``norm1..3`` and the output ``out.0``; the VAE's ``norm1``, ``norm2``, ``norm_out`` and ``mid.attn_1.norm``;
  CLIP-L's ``layer_norm1/2`` and ``final_layer_norm``; OpenCLIP's ``ln_1``, ``ln_2``, ``ln_final``.
- ``nn.Embedding``: ``embedding_table`` instead of ``weight`` (CLIP-L ``token_embedding``,
  ``position_embedding``; OpenCLIP ``token_embedding``). OpenCLIP's ``positional_embedding`` and
  ``text_projection`` are bare parameters and keep their sgm names.

``MINDSPORE_PARAMS`` is the one table of these renames: ``to_mindspore_names`` applies it (sgm -> MindSpore),
``from_mindspore_names`` inverts it (MindSpore -> sgm; used by ``single-file-to-sdxl`` on a ``.ckpt``).

Sources (mindspore-lab/mindone, examples/stable_diffusion_xl): the key list
``tools/model_conversion/mindspore_key_base.yaml``; ``convert_diffusers_to_mindone_sdxl.py``'s ``convert_weight``
(``norm``/``ln_``/UNet ``out.0``/``in_layers.0``/``out_layers.0`` -> gamma/beta, ``embedding.weight`` ->
``embedding_table``); ``gm/modules/embedders/clip/modeling_clip.py`` (``CLIPTextEmbeddings.token_embedding`` is an
``nn.Embedding``).

CLIP-L's token embedding is written as
``conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.embedding_table``. The MindSpore module
tree, ``mindspore_key_base_lcm.yaml`` and ``convert_diffusers_to_mindone_sdxl.py`` all give that name.
``mindspore_key_base.yaml`` is the exception: at that position, with CLIP-L's shape (49408, 768), it lists
``conditioner.embedders.1.model.token_embedding..embedding_table``, which looks like a typo. No MindONE ``.ckpt``
was available to check which name released files carry, so the reader also accepts the typo name
(``READ_ALIASES``) when the regular name is missing.

What diffusers does not store is not written: OpenCLIP's ``logit_scale`` (in MindONE's key list, unused for text
conditioning). MindONE's loader (``gm/helpers.py``, ``load_param_into_net(strict_load=False)``) reports it as
missing and keeps its initial value. Tensors keep the dtype of the diffusers folder. MindONE's own converter
writes float32.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UserError

V = TypeVar("V")

# sgm module paths (the name without its last part) whose MindSpore cell is a norm or an embedding.
_NORM_MODULE = re.compile(
    r"\.(norm\d?|norm_out|layer_norm\d|final_layer_norm|ln_\d|ln_final)$"  # named norms (all four models)
    r"|\.(in_layers|out_layers)\.0$"  # sgm ResBlock: GroupNorm first in both Sequentials
    r"|^model\.diffusion_model\.out\.0$"  # UNet output GroupNorm
)
_EMBEDDING_MODULE = re.compile(r"\.(token_embedding|position_embedding)$")
# The one rename table, both directions: (module pattern, PyTorch parameter -> MindSpore parameter).
MINDSPORE_PARAMS: tuple[tuple[re.Pattern[str], dict[str, str]], ...] = (
    (_NORM_MODULE, {"weight": "gamma", "bias": "beta"}),
    (_EMBEDDING_MODULE, {"weight": "embedding_table"}),
)
# MindSpore parameter -> PyTorch parameter, the inverse of MINDSPORE_PARAMS.
_FROM_MINDSPORE = {ms: pt for _, renames in MINDSPORE_PARAMS for pt, ms in renames.items()}
# Read only: another name for a tensor, used when the regular (MindSpore-named) key is missing. See the module doc.
READ_ALIASES = {
    "conditioner.embedders.1.model.token_embedding..embedding_table":
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.embedding_table",
}  # fmt: skip


def to_mindspore_name(key: str) -> str:
    """One sgm single-file name -> MindONE's (MindSpore) name."""
    module, _, param = key.rpartition(".")
    for pattern, renames in MINDSPORE_PARAMS:
        if param in renames and pattern.search(module):
            return f"{module}.{renames[param]}"
    return key


def _unique(pairs: list[tuple[str, V]], what: str) -> dict[str, V]:
    out: dict[str, V] = {}
    for key, value in pairs:
        if key in out:
            raise UserError(f"two {what} tensors are both named {key}; the checkpoint is inconsistent")
        out[key] = value
    return out


def to_mindspore_names(state: Mapping[str, V]) -> dict[str, V]:
    """sgm single-file names -> MindONE's: ``MINDSPORE_PARAMS`` applied, order and values unchanged."""
    return _unique([(to_mindspore_name(k), v) for k, v in state.items()], "MindSpore")


def from_mindspore_names(state: Mapping[str, V]) -> dict[str, V]:
    """MindONE (MindSpore) names -> sgm single-file names: the inverse of ``MINDSPORE_PARAMS``.

    Any ``gamma``/``beta``/``embedding_table`` parameter is renamed, whatever its module (MindSpore uses these
    names only on norms and embeddings). ``READ_ALIASES`` apply where their target name is absent.
    """
    pairs = []
    for key, value in state.items():
        alias = READ_ALIASES.get(key)
        if alias is not None and alias not in state:
            key = alias
        module, _, param = key.rpartition(".")
        pairs.append((f"{module}.{_FROM_MINDSPORE.get(param, param)}" if module else key, value))
    return _unique(pairs, "PyTorch")


def diffusers_to_mindone(model_dir: str | Path) -> dict[str, Any]:
    """A diffusers SDXL (base or refiner) folder's weights under MindONE's full-model ``.ckpt`` names."""
    from .sdxl_single_file import diffusers_to_single_file

    return to_mindspore_names(diffusers_to_single_file(model_dir))


# ---- CLI -----------------------------------------------------------------------------------------------------


def run_to_mindone(args) -> int:
    from .mindspore_ckpt import save_ckpt
    from .sdxl_single_file import diffusers_to_single_file, local_model_dir

    if args.out.suffix != ".ckpt":
        raise UserError(f"{args.out}: MindSpore's load_checkpoint reads only *.ckpt files; end OUT with .ckpt")
    single = diffusers_to_single_file(local_model_dir(args.model, weights=True))
    state = to_mindspore_names(single)
    renamed = sum(a != b for a, b in zip(single, state))
    save_ckpt(args.out, state)
    print(f"wrote {args.out}: {len(state)} tensors, {renamed} under MindSpore norm/embedding names")
    return 0


def add_to_mindone_args(parser, argv: list[str] | None = None) -> None:
    parser.add_argument("model", help="diffusers SDXL folder (base or refiner), tiny:sdxl, or a hub id")
    parser.add_argument("out", type=Path, help="output MindONE full-model .ckpt (read back by single-file-to-sdxl)")
    parser.set_defaults(func=run_to_mindone)
