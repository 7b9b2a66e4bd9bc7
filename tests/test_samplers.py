"""The resumable sampler replays detectron2's stream and skips what a resumed run consumed."""

import itertools

import pytest

from uniovseg.data.samplers import ResumableTrainingSampler


def _take(sampler, count):
    return list(itertools.islice(iter(sampler), count))


def test_skipping_continues_the_uninterrupted_stream():
    full = ResumableTrainingSampler(7, batch_size_per_rank=2, seed=3)
    resumed = ResumableTrainingSampler(7, batch_size_per_rank=2, seed=3)
    resumed.skip_batches(5)  # five iterations of two images were already trained on
    assert _take(resumed, 12) == _take(full, 22)[10:]


def test_each_pass_is_a_permutation_and_seeds_differ():
    stream = _take(ResumableTrainingSampler(5, batch_size_per_rank=1, seed=0), 10)
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:]) == list(range(5))
    other = _take(ResumableTrainingSampler(5, batch_size_per_rank=1, seed=1), 10)
    assert stream != other


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="empty"):
        ResumableTrainingSampler(0, batch_size_per_rank=1, seed=0)
