"""An infinite, resumable stream of raw samples from tar shards, split across ranks and workers.

Every data-loader worker of every rank is one *slot* (``slot = rank * num_workers + worker``,
``S = world_size * num_workers`` slots). Each epoch the slots divide the dataset at shard
granularity, so that no two slots read the same file:

1. *Units*: every shard is one unit; when there are fewer shards than slots, each shard is
   split into ``P = ceil(S / num_shards)`` units (part ``j`` keeps the samples whose position in
   the shard is ``j`` modulo ``P``; the shard's bytes are then read ``P`` times, by ``P`` slots).
2. The units are permuted with ``(seed, epoch)`` and dealt round-robin to the slots: slot ``s``
   reads units ``s, s + S, s + 2S, ...`` of the permutation, one after the other. When the
   number of units is not a multiple of ``S`` some slots get one unit more per epoch; each slot
   then starts its next epoch when it is done, so the slots' epochs drift apart but every epoch
   of every slot covers its units exactly once, and the slots' units of one epoch are the whole
   dataset: every sample is seen exactly once per epoch.
3. *Shuffle buffer*: a slot reads ``buffer_size`` consecutive samples of its units (a block),
   permutes them with ``(seed, epoch, slot, block)`` and emits them. Blocks do not overlap, so a
   sample moves at most ``buffer_size - 1`` places; the epoch's new shard order mixes the rest.

Resuming: every emitted sample carries its slot's :class:`StreamPosition` after it: the epoch,
the block, where the block starts (unit and sample offset in it) and how many of the block's
samples were emitted. A stream started at a position re-reads the block from its start (tar
members before the offset are skipped without being decoded: at most one shard per worker is
read again), permutes it the same way, and continues after the emitted ones. The train loader
(:mod:`uniovseg.data.stream_loader`) keeps the position of the last sample each slot delivered
to training; the trainer stores them in the checkpoint.

Memory per worker is bounded by the block (``buffer_size`` raw samples, e.g. 256 x ~1.5 MB for
SA-1B, 1000 x ~30 kB for 256 px caption images) plus the shard list; nothing grows with the
number of samples. Shards are read with ``webdataset`` (local files, URLs, ``pipe:`` commands).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

__all__ = ["StreamPosition", "ShardStream", "StreamSample"]

logger = logging.getLogger(__name__)

# Tags that keep the seeds of the unit order and of the block shuffles apart (numpy's
# SeedSequence reads (s, e) and (s, e, 0, 0) alike).
_UNIT_ORDER, _BLOCK_ORDER = 1, 2


@dataclass(frozen=True)
class StreamPosition:
    """Where a slot's stream is, just after one emitted sample.

    Attributes:
        epoch: The slot's epoch (0-based).
        block: Index of the shuffle block in the slot's epoch.
        unit: Index, in the slot's unit list of that epoch, of the block's first sample.
        offset: Samples of that unit before the block's first sample.
        emitted: Samples of the block emitted so far (1 after its first).
    """

    epoch: int = 0
    block: int = 0
    unit: int = 0
    offset: int = 0
    emitted: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, int]) -> StreamPosition:
        return cls(**{k: int(values[k]) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class StreamSample:
    """One raw sample of a slot's stream.

    Attributes:
        slot: The slot that read it.
        position: The slot's position just after it.
        sample: webdataset's sample: ``__key__``, ``__url__`` and one ``bytes`` value per file
            extension (``"jpg"``, ``"json"``, ``"txt"``...).
    """

    slot: int
    position: StreamPosition
    sample: dict


def _read_shard(url: str) -> Iterator[dict]:
    """The samples of one tar shard, in file order; a shard that cannot be read ends early with
    a warning (webdataset's ``warn_and_continue``) instead of stopping the run."""
    import webdataset as wds

    yield from wds.tariterators.tarfile_samples([{"url": url}], handler=wds.warn_and_continue)


class ShardStream(IterableDataset):
    """The raw samples of this rank's data-loader worker (see the module docstring).

    Args:
        shards: Shard paths or URLs (:func:`~uniovseg.data.datasets.shards.expand_shard_specs`);
            their order matters (it is part of the stream).
        seed: Seed of the shard order and of the shuffle; the same on every rank and restart.
        buffer_size: Samples per shuffle block (>= 1; 1 = no shuffle within shards).
        rank: This process's rank.
        world_size: Number of processes.
        num_workers: The ``DataLoader``'s worker processes on each rank (0 = the main process,
            one slot per rank).
        read_shard: ``url -> iterator of raw samples`` (tests); default: webdataset's tar reader.
    """

    def __init__(
        self,
        shards: Sequence[str],
        *,
        seed: int,
        buffer_size: int,
        rank: int,
        world_size: int,
        num_workers: int,
        read_shard: Callable[[str], Iterator[dict]] = _read_shard,
    ) -> None:
        if not shards:
            raise ValueError("ShardStream needs at least one shard")
        if buffer_size < 1:
            raise ValueError(f"the shuffle buffer must hold at least 1 sample, got {buffer_size}")
        if not 0 <= rank < world_size or num_workers < 0:
            raise ValueError(f"bad rank {rank} / world size {world_size} / workers {num_workers}")
        self.shards = list(shards)
        self.seed = int(seed)
        self.buffer_size = int(buffer_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.num_workers = int(num_workers)
        self.num_slots = self.world_size * max(1, self.num_workers)
        self.parts_per_shard = math.ceil(self.num_slots / len(self.shards))
        self.read_shard = read_shard
        # Where each slot starts (set by the loader on resume); absent slots start at the origin.
        self.start_positions: dict[int, StreamPosition] = {}

    # ------------------------------------------------------------------ layout
    def local_slots(self) -> list[int]:
        """The slots of this rank, one per worker."""
        per_rank = max(1, self.num_workers)
        return [self.rank * per_rank + w for w in range(per_rank)]

    def slot_units(self, epoch: int, slot: int) -> list[tuple[int, int]]:
        """The ``(shard index, part)`` units that ``slot`` reads in ``epoch``, in order."""
        num_units = len(self.shards) * self.parts_per_shard
        order = np.random.default_rng((self.seed, _UNIT_ORDER, epoch)).permutation(num_units)
        return [divmod(int(u), self.parts_per_shard) for u in order[slot :: self.num_slots]]

    def _current_slot(self) -> int:
        info = get_worker_info()
        if info is None:
            if self.num_workers:
                raise RuntimeError(
                    "this ShardStream was built for loader workers; iterate it in one"
                )
            return self.local_slots()[0]
        if info.num_workers != max(1, self.num_workers):
            raise RuntimeError(
                f"this ShardStream was built for {self.num_workers} loader workers, the loader "
                f"has {info.num_workers}"
            )
        return self.local_slots()[info.id]

    # ------------------------------------------------------------------ reading
    def _unit_samples(self, shard: int, part: int, skip: int) -> Iterator[dict]:
        """The samples of one unit after its first ``skip``."""
        samples = self.read_shard(self.shards[shard])
        if self.parts_per_shard > 1:
            samples = itertools.islice(samples, part, None, self.parts_per_shard)
        return itertools.islice(samples, skip, None)

    def _read(
        self, units: list[tuple[int, int]], unit: int, offset: int
    ) -> Iterator[tuple[int, int, dict]]:
        """``(unit, offset, sample)`` for every sample of ``units`` from ``(unit, offset)`` on."""
        for u in range(unit, len(units)):
            skip = offset if u == unit else 0
            for i, sample in enumerate(self._unit_samples(*units[u], skip), start=skip):
                yield u, i, sample

    def epoch_samples(self, slot: int, start: StreamPosition) -> Iterator[StreamSample]:
        """The samples of one epoch of ``slot`` that come after ``start``."""
        epoch = start.epoch
        reader = self._read(self.slot_units(epoch, slot), start.unit, start.offset)
        block, skip = start.block, start.emitted
        while True:
            samples = list(itertools.islice(reader, self.buffer_size))
            if not samples:
                return
            unit, offset, _ = samples[0]
            rng = np.random.default_rng((self.seed, _BLOCK_ORDER, epoch, slot, block))
            order = rng.permutation(len(samples))
            for emitted in range(skip + 1, len(samples) + 1):
                position = StreamPosition(epoch, block, unit, offset, emitted)
                yield StreamSample(slot, position, samples[order[emitted - 1]][2])
            del samples  # one block in memory at a time, not the old one while the next fills
            block, skip = block + 1, 0

    def slot_samples(self, slot: int) -> Iterator[StreamSample]:
        """The infinite stream of ``slot`` after its start position."""
        start = self.start_positions.get(slot, StreamPosition())
        while True:
            empty = True
            for item in self.epoch_samples(slot, start):
                empty = False
                yield item
            if empty and start == StreamPosition(epoch=start.epoch):
                units = [self.shards[s] for s, _ in self.slot_units(start.epoch, slot)]
                raise RuntimeError(
                    f"the shards of loader slot {slot} in epoch {start.epoch} hold no sample "
                    f"({', '.join(units[:3])}{', ...' if len(units) > 3 else ''}); check that "
                    "they are readable tar files"
                )
            start = StreamPosition(epoch=start.epoch + 1)

    def __iter__(self) -> Iterator[StreamSample]:
        return self.slot_samples(self._current_slot())
