"""A training sampler that can resume in the middle of its stream.

detectron2's ``TrainingSampler`` restarts its index stream from the beginning when a killed run
is resumed, so the resumed run would see the first images again. This sampler produces the same
infinite stream (``shuffle(range(n)) + shuffle(range(n)) + ...`` from a fixed seed, split across
ranks) and can skip the part that the interrupted run already consumed, so ``--resume`` continues
with the images the run would have seen next.

Random augmentations are re-drawn after a resume (the mapper's RNG state is not checkpointed), so
the resumed run is deterministic but not bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import itertools

import torch
from detectron2.utils import comm
from torch.utils.data import Sampler


class ResumableTrainingSampler(Sampler):
    """Infinite, seeded, rank-sharded index stream with :meth:`skip_batches`."""

    def __init__(self, size: int, *, batch_size_per_rank: int, seed: int, shuffle: bool = True):
        """
        Args:
            size: Number of dataset entries (> 0).
            batch_size_per_rank: Images per iteration on this rank (to convert iterations into
                consumed samples).
            seed: Seed of the shuffle; the same on every rank and every restart.
            shuffle: Shuffle each pass over the dataset.
        """
        if size <= 0:
            raise ValueError(f"the training dataset is empty (size {size}): nothing to sample")
        if batch_size_per_rank <= 0:
            raise ValueError(f"batch_size_per_rank must be > 0, got {batch_size_per_rank}")
        self._size = int(size)
        self._batch_size_per_rank = int(batch_size_per_rank)
        self._seed = int(seed)
        self._shuffle = shuffle
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._skip = 0

    def skip_batches(self, num_iterations: int) -> None:
        """Starts the stream after ``num_iterations`` iterations' worth of samples. Call before
        the data loader is first iterated (detectron2 iterates it lazily at the first step)."""
        self._skip = max(0, int(num_iterations)) * self._batch_size_per_rank

    def __iter__(self):
        rank_stream = itertools.islice(self._indices(), self._rank, None, self._world_size)
        yield from itertools.islice(rank_stream, self._skip, None)

    def _indices(self):
        generator = torch.Generator()
        generator.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=generator).tolist()
            else:
                yield from range(self._size)
