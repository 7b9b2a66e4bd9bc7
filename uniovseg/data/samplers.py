"""Training samplers that can resume in the middle of their stream.

detectron2's ``TrainingSampler`` restarts its index stream from the beginning when a killed run
is resumed, so the resumed run would see the first images again. :class:`ResumableTrainingSampler`
produces the same infinite stream (``shuffle(range(n)) + shuffle(range(n)) + ...`` from a fixed
seed, split across ranks) on every start, and :class:`ResumableBatchSampler` forms the batches
from it and can skip the ones that the interrupted run already trained on, so ``--resume``
continues with exactly the batches the run would have seen next.

The batches are formed here, on indices, instead of by detectron2's
``AspectRatioGroupedDataset`` on loaded images: that one groups images in the order the loader
workers deliver them and carries partially filled groups from one batch to the next, so with
mixed portrait and landscape images no count of skipped indices says where a resumed run starts
(it repeated some images and never showed others). Here the grouping is a pure function of the
index stream and the dataset's image sizes, and skipping replays it on indices without loading
an image, which is cheap.

Random augmentations are re-drawn after a resume (the mapper's RNG state is not checkpointed), so
the resumed run sees the same images in the same batches but not bit-identical inputs.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence

import torch
from detectron2.utils import comm
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

# Group ids of aspect_ratio_group_ids.
LANDSCAPE, PORTRAIT_OR_SQUARE, UNKNOWN_SIZE = 0, 1, 2


class ResumableTrainingSampler(Sampler):
    """Infinite, seeded index stream, sharded across ranks; the same on every restart."""

    def __init__(self, size: int, *, seed: int, shuffle: bool = True):
        """
        Args:
            size: Number of dataset entries (> 0).
            seed: Seed of the shuffle; the same on every rank and every restart.
            shuffle: Shuffle each pass over the dataset.
        """
        if size <= 0:
            raise ValueError(f"the training dataset is empty (size {size}): nothing to sample")
        self._size = int(size)
        self._seed = int(seed)
        self._shuffle = shuffle
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._indices(), self._rank, None, self._world_size)

    def _indices(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=generator).tolist()
            else:
                yield from range(self._size)


class ResumableBatchSampler(Sampler):
    """Batches of one rank's index stream, optionally grouped, with :meth:`skip_batches`.

    Indices are put in the bucket of their group; a bucket that reaches ``batch_size`` indices is
    yielded as a batch (in arrival order) and emptied, so partially filled buckets carry over to
    later batches, as in detectron2's ``AspectRatioGroupedDataset``. Every batch holds indices of
    a single group. Given to a ``DataLoader`` as ``batch_sampler``, the batches come out in this
    order for any number of workers.
    """

    def __init__(
        self,
        sampler: Iterable[int],
        *,
        batch_size: int,
        group_ids: Sequence[int] | None = None,
    ):
        """
        Args:
            sampler: An index stream that is the same on every iteration (a
                :class:`ResumableTrainingSampler`), already sharded for this rank.
            batch_size: Indices per batch (per rank), > 0.
            group_ids: Group (0-255) of every dataset index, e.g. from
                :func:`aspect_ratio_group_ids`; None puts every index in one group.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self._sampler = sampler
        self._batch_size = int(batch_size)
        # bytes: one byte per entry and fast item access, for datasets of millions of images.
        self._group_ids = None if group_ids is None else bytes(group_ids)
        self._skip = 0

    def skip_batches(self, num_batches: int) -> None:
        """Starts the stream after its first ``num_batches`` batches (the iterations a resumed
        run already trained on). Call before the data loader is first iterated (detectron2
        iterates it lazily at the first step)."""
        self._skip = max(0, int(num_batches))

    def __iter__(self) -> Iterator[list[int]]:
        # The skipped batches are formed too: the buckets they leave behind start the stream.
        yield from itertools.islice(self._batches(), self._skip, None)

    def _batches(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {}
        for index in self._sampler:
            group = 0 if self._group_ids is None else self._group_ids[index]
            bucket = buckets.setdefault(group, [])
            bucket.append(index)
            if len(bucket) == self._batch_size:
                buckets[group] = []
                yield bucket


def aspect_ratio_group_ids(dataset_dicts: Sequence[dict]) -> list[int]:
    """The aspect-ratio group of each dataset dict, from its ``width`` and ``height`` keys.

    Returns:
        One id per dict: ``LANDSCAPE`` (0) when wider than tall, ``PORTRAIT_OR_SQUARE`` (1)
        otherwise (detectron2's rule), ``UNKNOWN_SIZE`` (2) when the dict has no size (SA-1B and
        caption dicts carry only paths; their mappers pad every image to the same square, so
        grouping would save no padding there anyway).
    """
    group_ids = []
    for dataset_dict in dataset_dicts:
        width, height = dataset_dict.get("width"), dataset_dict.get("height")
        if width is None or height is None:
            group_ids.append(UNKNOWN_SIZE)
        else:
            group_ids.append(LANDSCAPE if width > height else PORTRAIT_OR_SQUARE)
    unknown = group_ids.count(UNKNOWN_SIZE)
    if unknown:
        logger.info(
            "aspect-ratio grouping: %d of %d dataset dicts have no width/height; they are "
            "batched together in their own group",
            unknown,
            len(group_ids),
        )
    return group_ids
