"""The resumable samplers replay the same stream and skip what a resumed run consumed, also when
batches group mixed portrait/landscape images by aspect ratio."""

import itertools
import random

import pytest
from detectron2.utils import comm

from uniovseg.data.samplers import (
    LANDSCAPE,
    PORTRAIT_OR_SQUARE,
    UNKNOWN_SIZE,
    ResumableBatchSampler,
    ResumableTrainingSampler,
    aspect_ratio_group_ids,
)


def _take(iterable, count):
    return list(itertools.islice(iter(iterable), count))


def _as_rank(monkeypatch, rank, world_size):
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    monkeypatch.setattr(comm, "get_world_size", lambda: world_size)


def _mixed_dicts(count=23, seed=0):
    """Dataset dicts of landscape, portrait and square images in random order (no pixels)."""
    rng = random.Random(seed)
    shapes = [(64, 48), (48, 64), (56, 56)]  # (width, height)
    return [dict(zip(("width", "height"), rng.choice(shapes), strict=True)) for _ in range(count)]


def _batch_sampler(dicts, *, batch_size=3, seed=7):
    return ResumableBatchSampler(
        ResumableTrainingSampler(len(dicts), seed=seed),
        batch_size=batch_size,
        group_ids=aspect_ratio_group_ids(dicts),
    )


def test_ungrouped_batches_are_consecutive_chunks_and_skipping_continues_them():
    stream = _take(ResumableTrainingSampler(7, seed=3), 22)
    full = _take(ResumableBatchSampler(ResumableTrainingSampler(7, seed=3), batch_size=2), 11)
    assert full == [stream[i : i + 2] for i in range(0, 22, 2)]
    resumed = ResumableBatchSampler(ResumableTrainingSampler(7, seed=3), batch_size=2)
    resumed.skip_batches(5)  # five iterations of two images were already trained on
    assert _take(resumed, 6) == full[5:]


def test_each_pass_is_a_permutation_and_seeds_differ():
    stream = _take(ResumableTrainingSampler(5, seed=0), 10)
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:]) == list(range(5))
    assert stream != _take(ResumableTrainingSampler(5, seed=1), 10)


def test_ranks_share_out_each_pass(monkeypatch):
    shards = []
    for rank in range(2):
        _as_rank(monkeypatch, rank, 2)
        shards.append(_take(ResumableTrainingSampler(6, seed=0), 3))
    assert sorted(shards[0] + shards[1]) == list(range(6))


@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (0, 2), (1, 2)])
@pytest.mark.parametrize("batch_size", [2, 4])
def test_grouped_stream_resumes_exactly_at_every_iteration(
    monkeypatch, rank, world_size, batch_size
):
    _as_rank(monkeypatch, rank, world_size)
    dicts = _mixed_dicts()
    full = _take(_batch_sampler(dicts, batch_size=batch_size), 61 + 15)
    broken = []
    for start in range(61):
        resumed = _batch_sampler(dicts, batch_size=batch_size)
        resumed.skip_batches(start)
        if _take(resumed, 15) != full[start : start + 15]:
            broken.append(start)
    assert broken == []


def test_grouped_batches_share_one_orientation_and_show_every_image():
    dicts = _mixed_dicts()
    batches = _take(_batch_sampler(dicts), 100)
    orientations = [{dicts[i]["width"] > dicts[i]["height"] for i in batch} for batch in batches]
    assert all(len(kinds) == 1 for kinds in orientations)
    assert {True} in orientations and {False} in orientations
    assert {i for batch in batches for i in batch} == set(range(len(dicts)))


def test_group_ids_follow_detectron2_and_keep_unsized_dicts_apart():
    dicts = [{"width": 4, "height": 3}, {"width": 3, "height": 4}, {"width": 3, "height": 3}, {}]
    expected = [LANDSCAPE, PORTRAIT_OR_SQUARE, PORTRAIT_OR_SQUARE, UNKNOWN_SIZE]
    assert aspect_ratio_group_ids(dicts) == expected


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="empty"):
        ResumableTrainingSampler(0, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        ResumableBatchSampler(ResumableTrainingSampler(3, seed=0), batch_size=0)
