"""Caches of the frozen encoders' output (``encode_batch``): in RAM (``--cache_latents``) or on disk
(``--cache_latents_to_disk``), so that training steps run the trained model only.

The disk cache is content-addressed: an example's key is the SHA-256 of the exact model input (the transformed
pixels, so the image content, its bucket and its crop, and the caption) and of the encoders' identity (recipe,
model, revision, variant, separate VAE, precision). A second run on the same data finds its keys and encodes
nothing; a changed image gets a new key and is encoded again. Entries are written in shards of safetensors
files named by rank, each renamed into place when complete; a shard whose header cannot be read (a truncated
write) is deleted and its entries encoded again, never used. Each rank encodes its share (positions
``rank::world``); training reads one example at a time from the memory-mapped shards, so RAM holds O(batch)
examples, not O(dataset).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import UserError

logger = logging.getLogger("diffusers_npu.train")
SHARD_SIZE = 256  # examples per shard file


class InMemory(torch.utils.data.Dataset):
    """Encoded examples by position; a ``(position, epoch)`` key from a batch sampler reads the position."""

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        return self.examples[key[0] if isinstance(key, tuple) else key]


def _examples(dataset, positions: list[int], collate: Callable, workers: int):
    """(position, batch of one) for ``positions`` of ``dataset``, decoded in ``workers`` loader processes."""
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, positions), batch_size=1, collate_fn=collate, num_workers=workers
    )
    return zip(positions, loader)


def encode_in_memory(dataset, collate: Callable, encode: Callable, workers: int = 0) -> InMemory:
    """``--cache_latents``: every example encoded once (one at a time: buckets differ in shape), kept in RAM."""
    examples = _examples(dataset, list(range(len(dataset))), collate, workers)
    bar = tqdm(examples, total=len(dataset), desc="caching latents", disable=not sys.stderr.isatty())
    return InMemory([{k: v[0].detach().cpu() for k, v in encode(batch).items()} for _, batch in bar])


def example_key(batch: dict, identity: str) -> str:
    """SHA-256 of one collated example's model input (pixels and caption) and the encoders' identity."""
    digest = hashlib.sha256(identity.encode())
    pixels = batch["pixel_values"][0].contiguous()
    digest.update(str(tuple(pixels.shape)).encode() + pixels.numpy().tobytes())
    digest.update(json.dumps(batch["captions"][0]).encode())
    return digest.hexdigest()


def read_index(folder: Path) -> dict[str, Path]:
    """key -> shard for every readable shard in ``folder``; unreadable (truncated) shards are deleted."""
    index: dict[str, Path] = {}
    for shard in sorted(folder.glob("shard-*.safetensors")):
        try:
            with safe_open(shard, "pt") as f:
                keys = json.loads(f.metadata()["keys"])
        except Exception as err:  # safetensors raises SafetensorError / OSError for a truncated header
            logger.warning("latent cache: deleting unreadable shard %s (%s); its examples are encoded again",
                           shard.name, type(err).__name__)  # fmt: skip
            shard.unlink(missing_ok=True)
            continue
        index.update(dict.fromkeys(keys, shard))
    return index


def _write_shard(folder: Path, rank: int, entries: dict[str, dict[str, torch.Tensor]]) -> None:
    tensors = {f"{key}/{name}": t.contiguous() for key, enc in entries.items() for name, t in enc.items()}
    name = f"shard-r{rank}-{uuid.uuid4().hex[:12]}.safetensors"
    tmp = folder / f".{name}.tmp"
    save_file(tensors, str(tmp), metadata={"keys": json.dumps(list(entries))})
    os.replace(tmp, folder / name)  # atomic: readers see a complete shard or none


def build_disk_cache(dataset, collate: Callable, encode: Callable, folder: Path, identity: str, rank: int,
                     world: int, barrier: Callable[[], None], workers: int = 0) -> DiskCached:  # fmt: skip
    """``--cache_latents_to_disk``: this rank keys its share of ``dataset``, encodes what the cache lacks, and
    writes shards; after ``barrier`` every rank reads every rank's keys. Returns the training dataset."""
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    index = read_index(folder)
    mine = list(range(rank, len(dataset), world))
    keys, pending, encoded = {}, {}, 0
    bar = tqdm(_examples(dataset, mine, collate, workers), total=len(mine), desc="latent cache",
               disable=not sys.stderr.isatty())  # fmt: skip
    for position, batch in bar:
        key = keys[position] = example_key(batch, identity)
        if key in index or key in pending:
            continue
        pending[key] = {k: v[0].detach().cpu() for k, v in encode(batch).items()}
        encoded += 1
        if len(pending) == SHARD_SIZE:
            _write_shard(folder, rank, pending)
            pending = {}
    if pending:
        _write_shard(folder, rank, pending)
    (folder / f"keys-r{rank}-of-{world}.json").write_text(json.dumps({str(p): k for p, k in keys.items()}))
    elapsed_s = time.perf_counter() - start
    logger.info("latent cache %s: rank %d encoded %d of its %d examples, reused %d, in %.1f s (%.1f examples/s)",
                folder, rank, encoded, len(mine), len(mine) - encoded, elapsed_s, len(mine) / elapsed_s)  # fmt: skip
    barrier()
    all_keys: dict[int, str] = {}
    for r in range(world):
        all_keys.update(
            {int(p): k for p, k in json.loads((folder / f"keys-r{r}-of-{world}.json").read_text()).items()}
        )
    return DiskCached([all_keys[p] for p in range(len(dataset))], read_index(folder))


@lru_cache(maxsize=8)
def _open(shard: str):
    return safe_open(shard, "pt")  # memory-mapped; a few handles per loader worker


class DiskCached(torch.utils.data.Dataset):
    """Training examples read from the shards one at a time: position -> key -> tensors."""

    def __init__(self, keys: list[str], index: dict[str, Path]):
        missing = [k for k in keys if k not in index]
        if missing:
            raise UserError(f"the latent cache lost {len(missing)} entries while it was built; run again")
        self.keys, self.shards = keys, {k: str(index[k]) for k in set(keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        entry = self.keys[key[0] if isinstance(key, tuple) else key]
        f = _open(self.shards[entry])
        prefix = entry + "/"
        return {name[len(prefix) :]: f.get_tensor(name) for name in f.keys() if name.startswith(prefix)}
