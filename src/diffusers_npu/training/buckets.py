"""Aspect-ratio buckets (``--enable_bucket``): images train at the bucket shape nearest their aspect ratio.

The bucket table is kohya sd-scripts' (library/model_util.py ``make_bucket_resolutions``): shapes of about
``resolution``² pixels whose sides are multiples of ``--bucket_reso_steps`` between ``--min_bucket_reso`` and
``--max_bucket_reso``, plus the square. An image goes to the bucket nearest its aspect ratio, is resized to
cover it and cropped by at most the rounding (NovelAI's aspect-ratio bucketing, as kohya implements it).

:class:`BucketBatchSampler` draws every batch from one bucket. Under DDP accelerate hands batch ``k * n + r`` to
rank ``r`` of ``n`` (accelerate data_loader.py ``BatchSamplerShard``), so batches come in groups of ``n`` from one
bucket: every rank trains the same shape at the same step. The order is a pure function of (seed, epoch).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

Shape = tuple[int, int]  # (height, width) in pixels


def bucket_shapes(resolution: int, min_reso: int, max_reso: int, step: int) -> list[Shape]:
    """kohya's bucket table for a ``resolution``² pixel budget, as sorted (height, width) pairs."""
    area = resolution * resolution
    side = int(math.sqrt(area) // step) * step
    shapes = {(side, side)}
    for width in range(min_reso, max_reso + 1, step):
        height = min(max_reso, int((area // width) // step) * step)
        if height >= min_reso:
            shapes.update({(height, width), (width, height)})
    return sorted(shapes)


def nearest_bucket(shapes: Sequence[Shape], height: int, width: int) -> Shape:
    """The bucket whose aspect ratio is nearest the image's (ties: the larger area, then the first)."""
    ratio = width / height
    return min(shapes, key=lambda s: (abs(s[1] / s[0] - ratio), -s[0] * s[1]))


def cover_and_crop(height: int, width: int, bucket: Shape) -> tuple[Shape, Shape]:
    """The resized size (height, width) that covers ``bucket`` and the largest crop offset (top, left) range."""
    bh, bw = bucket
    scale = max(bh / height, bw / width)
    size = (max(bh, round(height * scale)), max(bw, round(width * scale)))
    return size, (size[0] - bh, size[1] - bw)


class BucketBatchSampler:
    """Batches of dataset positions from one bucket each, in groups of ``num_replicas`` batches of one bucket.

    ``buckets`` maps each bucket to its positions. Every position is used once per epoch; a bucket's last batch
    may be smaller than ``batch_size`` (still one shape), and a group short of ``num_replicas`` batches is
    completed with batches of the same bucket from the start of its order. Yields lists of ``(position, epoch)``
    so the dataset's per-epoch choices (captions) follow the same seed.
    """

    # accelerate's BatchSamplerShard: batch_size None = batches of varying length; drop_last = no loop-back tail.
    batch_size = None
    drop_last = True

    def __init__(self, buckets: dict[Shape, list[int]], batch_size: int, num_replicas: int = 1, seed: int = 0):
        self.buckets = {shape: list(p) for shape, p in sorted(buckets.items()) if p}
        self.per_batch, self.num_replicas, self.seed, self.epoch = batch_size, num_replicas, seed, 0

    @property
    def sampler(self) -> BucketBatchSampler:
        # accelerate sets the epoch through ``batch_sampler.sampler.set_epoch`` (DataLoaderShard.set_epoch).
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _groups(self, rng: random.Random) -> list[list[list[int]]]:
        groups = []
        for positions in self.buckets.values():
            order = rng.sample(positions, len(positions))
            batches = [order[i : i + self.per_batch] for i in range(0, len(order), self.per_batch)]
            short = -len(batches) % self.num_replicas
            batches += [batches[i % len(batches)] for i in range(short)]
            groups += [batches[i : i + self.num_replicas] for i in range(0, len(batches), self.num_replicas)]
        rng.shuffle(groups)
        return groups

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        for group in self._groups(rng):
            for batch in group:
                yield [(p, self.epoch) for p in batch]

    def __len__(self) -> int:
        batches = (math.ceil(len(p) / self.per_batch) for p in self.buckets.values())
        return sum(math.ceil(b / self.num_replicas) * self.num_replicas for b in batches)
