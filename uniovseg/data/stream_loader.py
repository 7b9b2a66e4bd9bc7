"""The train loader of a shard dataset: mapped batches of a :class:`ShardStream`, resumable.

Each data-loader worker maps the raw samples of its slot (:mod:`uniovseg.data.shard_stream`)
and batches them itself, so every batch comes from one slot and carries that slot's position
after its last sample. :class:`StreamLoader`, in the training process, keeps the position of
the last batch each slot delivered: what training consumed, not what the workers prefetched.
Its :meth:`StreamLoader.state_dict` goes into the checkpoint (gathered from every rank by
:class:`uniovseg.engine.stream_checkpoint.StreamCheckpointHook`); after a resume each slot
starts just after the last sample it delivered, so a killed and resumed run gives every sample
to the mapper exactly once per epoch (and trains on each one the mapper accepts once). After a
resume each slot continues in its own order, but the round-robin over the workers starts again
at worker 0.

Samples that the mapper refuses (it returns None: unreadable image, no mask left...) are
dropped, not replaced: the stream is infinite and the next sample takes the place. A slot
whose whole epoch is refused stops the run with a message instead of spinning.

Unlike :func:`uniovseg.data.train_loader.build_resumable_train_loader` there is no
aspect-ratio grouping: the SA-1B and caption mappers pad every image to the same square.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

from detectron2.data.build import worker_init_reset_seed
from detectron2.utils.serialize import PicklableWrapper
from torch.utils.data import DataLoader, IterableDataset

from .shard_stream import ShardStream, StreamPosition

__all__ = ["StreamBatch", "StreamLoader", "build_stream_train_loader"]

logger = logging.getLogger(__name__)

# Incomplete shard samples are logged at the first one and every this many after it.
_INCOMPLETE_LOG_PERIOD = 1000


class StreamBatch(NamedTuple):
    """One batch of one slot, as a worker sends it to the training process.

    Attributes:
        slot: The slot (rank x worker) whose samples these are.
        position: The slot's stream position after the batch's last raw sample.
        samples: ``(name, epoch)`` of every mapped sample (``<shard>/<key>``).
        batch: The mapped samples.
    """

    slot: int
    position: StreamPosition
    samples: list[tuple[str, int]]
    batch: list[dict]


class _MappedBatches(IterableDataset):
    """Batches of ``mapper(decode(sample))`` over a slot's stream; refused samples dropped."""

    def __init__(self, stream: ShardStream, decode, mapper, *, batch_size: int) -> None:
        self.stream = stream
        self.decode = decode
        self.mapper = PicklableWrapper(mapper)  # a lambda mapper works with spawned workers
        self.batch_size = int(batch_size)
        self.incomplete = 0

    def _warn_incomplete(self, sample: dict) -> None:
        self.incomplete += 1
        if self.incomplete == 1 or self.incomplete % _INCOMPLETE_LOG_PERIOD == 0:
            files = ", ".join(sorted(k for k in sample if not k.startswith("__")))
            logger.warning(
                "%d shard sample(s) so far lack a file and were skipped (in this worker); "
                "latest: %s/%s with only [%s]. The files of one sample must be adjacent in the "
                "tar (re-pack with tools/write_shards.py)",
                self.incomplete,
                sample.get("__url__"),
                sample.get("__key__"),
                files,
            )

    def __iter__(self) -> Iterator[StreamBatch]:
        batch: list[dict] = []
        names: list[tuple[str, int]] = []
        epoch, accepted, from_start = None, 0, False
        for item in self.stream:
            position = item.position
            if position.epoch != epoch:
                # Only an epoch that this iterator saw from its first sample can be judged.
                if from_start and accepted == 0:
                    raise RuntimeError(
                        f"every sample of loader slot {item.slot}'s epoch {epoch} was refused "
                        "(the mapper logs why); check the training shards"
                    )
                epoch, accepted = position.epoch, 0
                from_start = position == StreamPosition(epoch=epoch, emitted=1)
            record = self.decode(item.sample)
            data = self.mapper(record) if record is not None else None
            if data is None:
                if record is None:
                    self._warn_incomplete(item.sample)
                continue
            accepted += 1
            batch.append(data)
            names.append((record["file_name"], epoch))
            if len(batch) == self.batch_size:
                yield StreamBatch(item.slot, position, names, batch)
                batch, names = [], []


def _as_is(batch: StreamBatch) -> StreamBatch:
    return batch


class StreamLoader:
    """Iterates the ``DataLoader`` of a shard stream, yielding ``list[dict]`` batches and
    keeping, per slot, the position after the last batch yielded.

    Attributes:
        name: Names this loader's state in the checkpoint (``"train"``, ``"mask_train"``).
        stream: The :class:`ShardStream` (its ``start_positions`` are set by
            :meth:`load_state_dict` before the first iteration).
        last_samples: ``(name, epoch)`` of the samples of the last yielded batch.
    """

    def __init__(self, loader: DataLoader, stream: ShardStream, *, name: str, fingerprint: str):
        self.loader = loader
        self.stream = stream
        self.name = name
        self.fingerprint = fingerprint
        self.last_samples: list[tuple[str, int]] = []
        self._positions: dict[int, StreamPosition] = {}
        self.stream_loaders = [self]
        self.resumable_samplers: list = []  # resumed through stream_loaders, not by skipping

    def __iter__(self) -> Iterator[list[dict]]:
        for item in self.loader:
            self._positions[item.slot] = item.position
            self.last_samples = item.samples
            yield item.batch

    def layout(self) -> dict:
        """What a saved position is only valid for: the same shards, slots, buffer and seed."""
        s = self.stream
        return {
            "shards": self.fingerprint,
            "num_shards": len(s.shards),
            "num_slots": s.num_slots,
            "buffer_size": s.buffer_size,
            "seed": s.seed,
        }

    def state_dict(self) -> dict:
        """This rank's part: ``{"layout": ..., "positions": {slot: position dict}}`` with the
        slots that delivered at least one batch (the others start at their origin)."""
        positions = {str(slot): p.as_dict() for slot, p in sorted(self._positions.items())}
        return {"layout": self.layout(), "positions": positions}

    def load_state_dict(self, state: Mapping) -> None:
        """Starts this rank's slots after the positions of ``state`` (the merged state of every
        rank). Call before the first iteration.

        A state saved with other shards, another number of slots (processes x workers), buffer
        or seed cannot be continued sample by sample: the stream then starts the epoch after
        the newest saved one (no sample repeats within an epoch; the interrupted epoch's unseen
        samples are skipped) and says so.
        """
        positions = {
            int(slot): StreamPosition.from_dict(p) for slot, p in state.get("positions", {}).items()
        }
        saved, current = dict(state.get("layout", {})), self.layout()
        if saved != current:
            epoch = 1 + max((p.epoch for p in positions.values()), default=-1)
            changed = sorted(k for k in current if saved.get(k) != current[k])
            logger.warning(
                "%s: the checkpoint's data stream was saved with another %s; starting at epoch %d "
                "instead of resuming sample by sample",
                self.name,
                "/".join(changed),
                epoch,
            )
            starts = {slot: StreamPosition(epoch=epoch) for slot in self.stream.local_slots()}
        else:
            starts = {s: positions[s] for s in self.stream.local_slots() if s in positions}
        self.stream.start_positions = starts
        self._positions = dict(starts)
        if starts:
            logger.info(
                "%s: resuming the shard stream of slots %s at %s",
                self.name,
                sorted(starts),
                ", ".join(
                    f"epoch {p.epoch} block {p.block} (+{p.emitted})" for p in starts.values()
                ),
            )


def build_stream_train_loader(
    shards: list[str],
    *,
    decode: Callable[[dict], dict | None],
    mapper: Callable[[dict], dict | None],
    batch_size: int,
    seed: int,
    buffer_size: int,
    rank: int,
    world_size: int,
    num_workers: int,
    name: str,
    fingerprint: str,
) -> StreamLoader:
    """An infinite, resumable loader of this rank's batches of a shard dataset.

    Args:
        shards: Shard paths or URLs, in a fixed order.
        decode: Raw shard sample -> dataset dict, or None for an incomplete sample.
        mapper: Dataset dict -> training example, or None to drop it.
        batch_size: Examples per batch of this rank.
        seed: Seed of the shard order and the shuffle; the same on every rank and restart.
        buffer_size: Samples per shuffle block (``DATALOADER.UNIOVSEG.SHUFFLE_BUFFER``).
        rank: This process's rank.
        world_size: Number of processes.
        num_workers: Data-loader workers per rank (``DATALOADER.NUM_WORKERS``).
        name: The loader's name in the checkpoint.
        fingerprint: Identifies the shard list (``shard_list_fingerprint``).

    Returns:
        A :class:`StreamLoader`.
    """
    if batch_size <= 0:
        raise ValueError(f"the batch size per process must be > 0, got {batch_size}")
    stream = ShardStream(
        shards,
        seed=seed,
        buffer_size=buffer_size,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
    )
    if stream.parts_per_shard > 1:
        logger.warning(
            "%s: %d shards for %d loader slots (processes x workers): each shard is read by %d "
            "slots, each keeping every %d-th sample; write more, smaller shards to read each "
            "byte once",
            name,
            len(shards),
            stream.num_slots,
            stream.parts_per_shard,
            stream.parts_per_shard,
        )
    loader = DataLoader(
        _MappedBatches(stream, decode, mapper, batch_size=batch_size),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_as_is,
        worker_init_fn=worker_init_reset_seed,
    )
    logger.info(
        "%s: streaming %d shards over %d slots, shuffle blocks of %d samples",
        name,
        len(shards),
        stream.num_slots,
        buffer_size,
    )
    return StreamLoader(loader, stream, name=name, fingerprint=fingerprint)
