"""The shard stream: shards split across ranks and workers, every sample exactly once per epoch,
a resume at any sample continues the stream exactly, and the loader's saved positions are those
of the batches training consumed (not of what the workers prefetched)."""

import itertools
from collections import Counter

import pytest

from uniovseg.data.shard_stream import ShardStream, StreamPosition
from uniovseg.data.stream_loader import StreamLoader, build_stream_train_loader

# Shards of uneven sizes, as real ones are (the last shard of a conversion is short).
_SIZES = [5, 3, 7, 1, 4, 6]


def _fake_shards(sizes=_SIZES) -> tuple[list[str], dict]:
    shards = [f"shard{i}.tar" for i in range(len(sizes))]
    contents = {
        name: [{"__key__": f"{name}:{j}", "__url__": name} for j in range(size)]
        for name, size in zip(shards, sizes, strict=True)
    }
    return shards, contents


def _stream(contents, shards, **kwargs) -> ShardStream:
    kwargs = {"seed": 3, "buffer_size": 4, "rank": 0, "world_size": 1, "num_workers": 0} | kwargs
    return ShardStream(shards, read_shard=lambda url: iter(contents[url]), **kwargs)


def _epoch_keys(stream: ShardStream, slot: int, epoch: int) -> list[str]:
    start = StreamPosition(epoch=epoch)
    return [item.sample["__key__"] for item in stream.epoch_samples(slot, start)]


@pytest.mark.parametrize(
    ("world_size", "num_workers"),
    [(1, 0), (2, 0), (2, 2), (3, 3)],  # 9 slots for 6 shards: shards are split in parts
)
def test_every_sample_exactly_once_per_epoch_over_all_slots(world_size, num_workers):
    shards, contents = _fake_shards()
    all_keys = sorted(s["__key__"] for samples in contents.values() for s in samples)
    for epoch in range(3):
        seen = []
        for rank in range(world_size):
            stream = _stream(contents, shards, rank=rank, world_size=world_size,
                             num_workers=num_workers)  # fmt: skip
            for slot in stream.local_slots():
                seen.extend(_epoch_keys(stream, slot, epoch))
        assert sorted(seen) == all_keys


def test_epochs_reshuffle_and_no_two_slots_share_a_shard_when_there_are_enough():
    shards, contents = _fake_shards()
    stream = _stream(contents, shards, world_size=2, num_workers=2, rank=1)
    assert stream.parts_per_shard == 1
    units = [{s for s, _ in stream.slot_units(0, slot)} for slot in range(stream.num_slots)]
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(units, 2))
    orders = {tuple(_epoch_keys(stream, slot, epoch)) for slot in range(4) for epoch in range(4)}
    assert len(orders) > 4  # each slot reads other shards, or the same in another order


def test_shuffle_moves_samples_within_blocks_only():
    shards, contents = _fake_shards([12])
    stream = _stream(contents, shards, buffer_size=4)
    keys = [int(k.split(":")[1]) for k in _epoch_keys(stream, 0, 0)]
    assert keys != sorted(keys)
    assert [sorted(keys[i : i + 4]) for i in (0, 4, 8)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
    ]


def test_a_stream_started_at_any_position_continues_exactly():
    shards, contents = _fake_shards()
    stream = _stream(contents, shards, world_size=2, num_workers=0, rank=1)
    slot = stream.local_slots()[0]
    full = list(itertools.islice(stream.slot_samples(slot), 60))  # over several epochs
    for k, item in enumerate(full[:-10]):
        stream.start_positions = {slot: item.position}
        resumed = list(itertools.islice(stream.slot_samples(slot), 10))
        assert [r.sample["__key__"] for r in resumed] == [
            f.sample["__key__"] for f in full[k + 1 : k + 11]
        ], f"resume after sample {k} ({item.position})"
        assert [r.position for r in resumed] == [f.position for f in full[k + 1 : k + 11]]


def test_unreadable_shards_stop_with_a_message_instead_of_spinning():
    shards, contents = _fake_shards([0, 0])
    stream = _stream(contents, shards)
    with pytest.raises(RuntimeError, match="hold no sample"):
        next(iter(stream))


def _key_mapper(record):
    return None if record["n"] % 7 == 3 else {"key": record["key"]}  # refuses some samples


def _decode(sample):
    return {"file_name": sample["__key__"], "key": sample["__key__"], "n": int(sample["n"])}


def _loader(shards, *, num_workers, rank=0, world_size=1) -> StreamLoader:
    return build_stream_train_loader(
        shards,
        decode=_decode,
        mapper=_key_mapper,
        batch_size=2,
        seed=5,
        buffer_size=3,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        name="train",
        fingerprint="test",
    )


@pytest.fixture
def tar_shards(tmp_path):
    """Six real tar shards (webdataset's writer) of 1-6 samples with a counter ``n``."""
    import webdataset as wds

    shards, n = [], 0
    for i, size in enumerate([6, 1, 4, 5, 2, 3]):
        path = str(tmp_path / f"{i:06d}.tar")
        with wds.TarWriter(path) as writer:
            for _ in range(size):
                writer.write({"__key__": f"s{n:03d}", "n": str(n).encode()})
                n += 1
        shards.append(path)
    return shards, n


def _take(loader: StreamLoader, count: int) -> list[tuple[str, int]]:
    """``(name, epoch)`` of the samples of the next ``count`` batches."""
    taken = []
    for batch in itertools.islice(iter(loader), count):
        assert [d["key"] for d in batch] == [name for name, _ in loader.last_samples]
        taken.extend(loader.last_samples)
    return taken


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2])
def test_loader_resumes_after_the_consumed_batches_exactly_once_per_epoch(
    tar_shards, num_workers, world_size
):
    shards, total = tar_shards
    expected = sorted(f"s{n:03d}" for n in range(total) if n % 7 != 3)
    seen = []
    for rank in range(world_size):
        # Take 3 batches (the workers prefetch more), save, resume in a new loader, go on.
        first = _loader(shards, num_workers=num_workers, rank=rank, world_size=world_size)
        samples = _take(first, 3)
        state = first.state_dict()
        resumed = _loader(shards, num_workers=num_workers, rank=rank, world_size=world_size)
        resumed.load_state_dict(state)
        samples += _take(resumed, 12)
        assert {epoch for _, epoch in samples} >= {0, 1}  # the rank went past its epoch 0
        seen += [name for name, epoch in samples if epoch == 0]
    counts = Counter(seen)
    assert sorted(counts) == expected and set(counts.values()) == {1}


def test_a_changed_layout_starts_a_new_epoch_instead_of_a_wrong_position(tar_shards):
    shards, _ = tar_shards
    first = _loader(shards, num_workers=0)
    _take(first, 2)
    state = first.state_dict()
    resumed = _loader(shards, num_workers=0, world_size=2)  # another number of slots
    resumed.load_state_dict(state)
    assert resumed.stream.start_positions == {0: StreamPosition(epoch=1)}
    assert {epoch for _, epoch in _take(resumed, 2)} == {1}
