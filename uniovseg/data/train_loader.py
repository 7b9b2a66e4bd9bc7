"""The training data loader: a resumable, rank-sharded, optionally aspect-ratio-grouped stream.

It replaces detectron2's ``build_detection_train_loader`` for training so that ``--resume``
continues with exactly the batches an uninterrupted run would have seen (see
:mod:`uniovseg.data.samplers`): the batches are formed on indices in the main process by a
:class:`ResumableBatchSampler` and the workers only load them, so their order does not depend on
the number of workers. The same code runs with and without a resume; resuming only calls
``skip_batches`` on ``loader.resumable_samplers`` before the first iteration.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage, has_event_storage
from detectron2.utils.serialize import PicklableWrapper
from torch.utils.data import DataLoader, Dataset

from .samplers import ResumableBatchSampler, ResumableTrainingSampler, aspect_ratio_group_ids

__all__ = ["EntitySourceLog", "build_resumable_train_loader"]

logger = logging.getLogger(__name__)

# Consecutive entries a mapper may refuse for one index before the loader gives up.
_MAX_MAPPING_ATTEMPTS = 100


class _MapWithFallback(Dataset):
    """``mapper(dataset[index])``; an entry the mapper refuses (returns None) is replaced by one
    drawn from a generator seeded with ``(seed, index, attempt)``.

    detectron2's ``MapDataset`` draws the replacement from a per-process generator whose state
    depends on everything the process mapped before, so a resumed run would get other
    replacements; here an index always gets the same one.
    """

    def __init__(self, dataset: Dataset, mapper, *, seed: int):
        self._dataset = dataset
        self._mapper = PicklableWrapper(mapper)  # a lambda mapper works with spawned workers
        self._seed = int(seed)

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int):
        current = int(index)
        for attempt in range(1, _MAX_MAPPING_ATTEMPTS + 1):
            data = self._mapper(self._dataset[current])
            if data is not None:
                return data
            current = int(np.random.default_rng((self._seed, index, attempt)).integers(len(self)))
        raise RuntimeError(
            f"the mapper refused {_MAX_MAPPING_ATTEMPTS} dataset entries in a row (starting at "
            f"index {index}); check the training data (the mapper logs why it skips entries)"
        )


def build_resumable_train_loader(
    dataset_dicts: list[dict],
    mapper,
    *,
    total_batch_size: int,
    seed: int,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
) -> DataLoader:
    """An infinite train loader of this rank's batches that can resume at any iteration.

    Args:
        dataset_dicts: The training dataset dicts. With ``aspect_ratio_grouping`` their ``width``
            and ``height`` keys (when present) choose the batches; no image is read for it.
        mapper: Callable mapping a dataset dict to a training example, or None to skip it (a
            deterministic replacement is then mapped instead).
        total_batch_size: Images per iteration over all ranks; divisible by the world size.
        seed: Seed of the index stream; the same on every rank and every restart.
        aspect_ratio_grouping: Batch landscape images only with landscape images and portrait or
            square ones only with those (``DATALOADER.ASPECT_RATIO_GROUPING``).
        num_workers: Loader worker processes (``DATALOADER.NUM_WORKERS``).

    Returns:
        A ``DataLoader`` yielding ``list[dict]`` batches of ``total_batch_size / world size``
        mapped examples, with ``resumable_samplers``: the one :class:`ResumableBatchSampler`,
        whose ``skip_batches(start_iter)`` must be called before the first iteration to resume.
    """
    world_size = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={total_batch_size} must be a positive multiple of the number "
            f"of processes ({world_size})"
        )
    batch_sampler = ResumableBatchSampler(
        ResumableTrainingSampler(len(dataset_dicts), seed=seed),
        batch_size=total_batch_size // world_size,
        group_ids=aspect_ratio_group_ids(dataset_dicts) if aspect_ratio_grouping else None,
    )
    dataset = _MapWithFallback(DatasetFromList(dataset_dicts, copy=False), mapper, seed=seed)
    loader = DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        worker_init_fn=worker_init_reset_seed,
    )
    loader.resumable_samplers = [batch_sampler]
    return loader


class EntitySourceLog:
    """Passes batches through, recording where each caption example's entities came from.

    Every batch's mix (the ``entity_source`` key of :class:`~uniovseg.data.caption_mapper.
    CaptionDatasetMapper` examples: ``"manifest"`` or the parser's name) goes to the event
    storage as ``entities/from_manifest`` (the fraction of the batch; metrics.json) and to the
    debug log; the info log gets the first batch and every batch whose set of sources differs
    from the previous one's, so a run that switches source (e.g. manifest rows running out) says
    so once instead of on every iteration.

    Args:
        loader: An iterable of ``list[dict]`` batches; its ``resumable_samplers`` and
            ``stream_loaders`` are kept.
    """

    def __init__(self, loader) -> None:
        self.loader = loader
        self.resumable_samplers = getattr(loader, "resumable_samplers", [])
        self.stream_loaders = getattr(loader, "stream_loaders", [])

    def __iter__(self):
        previous: frozenset[str] | None = None
        for batch in self.loader:
            counts = Counter(x["entity_source"] for x in batch if "entity_source" in x)
            if counts:
                total = sum(counts.values())
                mix = ", ".join(f"{n}/{total} {source}" for source, n in sorted(counts.items()))
                sources = frozenset(counts)
                log = logger.info if sources != previous else logger.debug
                log("Entities of this batch: %s", mix)
                previous = sources
                if has_event_storage():  # inside a training loop
                    fraction = counts["manifest"] / total
                    get_event_storage().put_scalar("entities/from_manifest", fraction)
            yield batch
