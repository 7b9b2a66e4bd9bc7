"""A resumed run sees exactly the batches the uninterrupted run would have seen from its start
iteration on, with aspect-ratio grouping over mixed portrait/landscape/square images, on every
rank of a multi-process run and with loader workers."""

import itertools
import random

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.utils import comm

from uniovseg.config import add_uniovseg_config
from uniovseg.engine import trainer as trainer_module

_SHAPES = {"landscape": (64, 48), "portrait": (48, 64), "square": (56, 56)}  # (width, height)
_DATASET = "_test_resume_stream_mixed"
_RESUME_POINTS = range(61)
_COMPARED_BATCHES = 12


def _mixed_dicts(count: int = 23, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    dicts = []
    for image_id in range(count):
        width, height = _SHAPES[rng.choice(sorted(_SHAPES))]
        dicts.append({"image_id": image_id, "width": width, "height": height})
    return dicts


def _identity_mapper(dataset_dict: dict) -> dict:
    return dataset_dict


@pytest.fixture
def mixed_dataset():
    DatasetCatalog.register(_DATASET, _mixed_dicts)
    yield _DATASET
    DatasetCatalog.remove(_DATASET)


def _as_rank(monkeypatch, rank: int, world_size: int) -> None:
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    monkeypatch.setattr(comm, "get_world_size", lambda: world_size)


def _cfg(dataset: str, *, world_size: int, num_workers: int):
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.SOLVER.IMS_PER_BATCH = 3 * world_size
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = True
    cfg.DATALOADER.NUM_WORKERS = num_workers
    cfg.SEED = 7
    return cfg


def _ids(loader, start_iter: int, count: int) -> list[list[int]]:
    """The image ids of ``count`` batches of a loader resumed at ``start_iter`` (as
    ``Trainer.resume_or_load`` does it)."""
    for sampler in loader.resumable_samplers:
        sampler.skip_batches(start_iter)
    batches = itertools.islice(iter(loader), count)
    return [[d["image_id"] for d in batch] for batch in batches]


def _broken_resume_points(cfg, resume_points) -> list[int]:
    full = _ids(trainer_module.build_train_loader(cfg), 0, max(resume_points) + _COMPARED_BATCHES)
    broken = []
    for start in resume_points:
        resumed = _ids(trainer_module.build_train_loader(cfg), start, _COMPARED_BATCHES)
        if resumed != full[start : start + _COMPARED_BATCHES]:
            broken.append(start)
    return broken


@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (0, 2), (1, 2)])
def test_train_loader_resumes_exactly_at_every_iteration(
    monkeypatch, mixed_dataset, rank, world_size
):
    _as_rank(monkeypatch, rank, world_size)
    monkeypatch.setattr(trainer_module, "build_train_mapper", lambda cfg: _identity_mapper)
    cfg = _cfg(mixed_dataset, world_size=world_size, num_workers=0)
    assert _broken_resume_points(cfg, _RESUME_POINTS) == []


def _refusing_mapper(dataset_dict: dict) -> dict | None:
    """Refuses every fifth image, as a mapper does with an unreadable file."""
    return None if dataset_dict["image_id"] % 5 == 0 else dataset_dict


def test_replacements_of_refused_images_are_the_same_after_a_resume(monkeypatch, mixed_dataset):
    _as_rank(monkeypatch, 1, 2)
    monkeypatch.setattr(trainer_module, "build_train_mapper", lambda cfg: _refusing_mapper)
    cfg = _cfg(mixed_dataset, world_size=2, num_workers=0)
    assert _broken_resume_points(cfg, _RESUME_POINTS) == []
    batches = _ids(trainer_module.build_train_loader(cfg), 0, 30)
    assert not any(image_id % 5 == 0 for batch in batches for image_id in batch)


def test_train_loader_with_workers_resumes_exactly(monkeypatch, mixed_dataset):
    _as_rank(monkeypatch, 1, 2)
    monkeypatch.setattr(trainer_module, "build_train_mapper", lambda cfg: _identity_mapper)
    cfg = _cfg(mixed_dataset, world_size=2, num_workers=2)
    assert _broken_resume_points(cfg, [0, 1, 2, 5, 11, 30, 59]) == []


def test_train_loader_batches_share_one_orientation(monkeypatch, mixed_dataset):
    monkeypatch.setattr(trainer_module, "build_train_mapper", lambda cfg: _identity_mapper)
    loader = trainer_module.build_train_loader(_cfg(mixed_dataset, world_size=1, num_workers=0))
    batches = list(itertools.islice(iter(loader), 40))
    landscape = [{d["width"] > d["height"] for d in batch} for batch in batches]
    assert all(len(kinds) == 1 for kinds in landscape)
    assert {True} in landscape and {False} in landscape
