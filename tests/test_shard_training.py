"""Training from tar shards: the synthetic world written as shards (tools/write_shards.py), read
back into the same mapper inputs as the extracted folder, a tiny stage-1 and a tiny stage-2 step
(caption and mask streams joined), and a two-process train_net.py run (gloo, detectron2's
launcher) that is killed, resumed under torchrun, and trains on every sample exactly once per
epoch."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from uniovseg.data.datasets.shards import (
    caption_sample_to_dict,
    expand_shard_specs,
    sa1b_sample_to_dict,
)
from uniovseg.data.shard_stream import ShardStream
from uniovseg.data.synthetic import SplitCounts, generate_synthetic_world, load_world

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny synthetic world (64 px) and its SA-1B and caption sets as shards."""
    root = tmp_path_factory.mktemp("shard_world")
    generate_synthetic_world(
        str(root / "world"),
        world=load_world(None),
        counts=SplitCounts(sa1b=4, captions=5, eval=0, pretrain=0),
        image_size=64,
        progress=False,
    )
    spec = importlib.util.spec_from_file_location(
        "write_shards", REPO / "tools" / "write_shards.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for kind, source, path in (
        ("sa1b", "--root", root / "world" / "sa1b"),
        ("captions", "--manifest", root / "world" / "captions" / "captions.jsonl"),
    ):
        argv = [kind, source, str(path), "--output", str(root / kind), "--samples-per-shard", "2"]
        assert tool.main(argv) == 0
    return root


def _raw_samples(shards):
    stream = ShardStream(shards, seed=0, buffer_size=1, rank=0, world_size=1, num_workers=0)
    units = stream.slot_units(0, 0)
    return [s for shard, _ in units for s in stream.read_shard(shards[shard])]


def test_shards_hold_the_folders_samples_byte_for_byte(world):
    from uniovseg.data.datasets.captions import load_caption_manifest
    from uniovseg.data.datasets.sa1b import load_sa1b_dicts

    shards = expand_shard_specs([str(world / "sa1b")])
    assert len(shards) == 2
    from_shards = {d["image_id"]: d for d in map(sa1b_sample_to_dict, _raw_samples(shards))}
    folder = load_sa1b_dicts(str(world / "world" / "sa1b"))
    assert sorted(from_shards) == sorted(d["image_id"] for d in folder)
    for d in folder:
        shard_dict = from_shards[d["image_id"]]
        assert shard_dict["image_bytes"] == Path(d["file_name"]).read_bytes()
        assert shard_dict["annotation_bytes"] == Path(d["annotation_file"]).read_bytes()

    shards = expand_shard_specs([str(world / "captions" / "{000000..000002}.tar")])
    rows = load_caption_manifest(str(world / "world" / "captions" / "captions.jsonl"))
    records = sorted(map(caption_sample_to_dict, _raw_samples(shards)), key=lambda r: r["image_id"])
    assert [r["image_id"] for r in records] == [r["image_id"] for r in rows]
    for record, row in zip(records, rows, strict=True):
        assert record["caption"] == row["caption"]
        assert record.get("refined_caption") == row.get("refined_caption")
        assert record["image_bytes"] == Path(row["file_name"]).read_bytes()


def test_mappers_give_the_same_example_from_a_shard_as_from_the_folder(world):
    from uniovseg.data.datasets.sa1b import load_sa1b_dicts
    from uniovseg.data.sa1b_mapper import SA1BDatasetMapper

    folder = {d["image_id"]: d for d in load_sa1b_dicts(str(world / "world" / "sa1b"))}
    shards = expand_shard_specs([str(world / "sa1b")])
    record = sa1b_sample_to_dict(_raw_samples(shards)[0])
    a = SA1BDatasetMapper(crop_size=64, seed=1)(record)
    b = SA1BDatasetMapper(crop_size=64, seed=1)(folder[record["image_id"]])
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["gt_masks"], b["gt_masks"])


def _train_in_process(config: str, opts: list[str], output: Path):
    import uniovseg.data.datasets as datasets
    import uniovseg.modeling  # noqa: F401  (registers UniOVSeg)
    from uniovseg.config import load_config
    from uniovseg.engine.trainer import Trainer

    cfg = load_config(config, opts + ["SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(output)])
    cfg.freeze()
    datasets.register_training_datasets_from_config(cfg)
    datasets.check_datasets(cfg.DATASETS.TRAIN)
    try:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    finally:
        datasets.register_training_datasets()  # the defaults again, for other tests
    return trainer


def test_tiny_stage1_step_from_shards(world, tmp_path):
    opts = ["DATASETS.TRAIN", "('sa1b_train',)",
            "DATASETS.UNIOVSEG.SA1B_SHARDS", f"['{world / 'sa1b'}']"]  # fmt: skip
    trainer = _train_in_process("configs/tiny/stage1_tiny.yaml", opts, tmp_path / "out")
    assert np.isfinite(trainer.storage.history("total_loss").latest())
    saved = torch.load(tmp_path / "out" / "model_final.pth", weights_only=True)
    positions = saved["trainer"]["hooks"]["StreamCheckpointHook"]["loaders"]["train"]
    assert positions["positions"]["0"]["emitted"] == 2  # one batch of 2 from slot 0


def test_tiny_stage2_step_joins_caption_and_mask_shards(world, tmp_path):
    opts = [
        "DATASETS.TRAIN", "('captions_train',)",
        "DATASETS.UNIOVSEG.CAPTION_SHARDS", f"['{world / 'captions'}']",
        "DATASETS.UNIOVSEG.SA1B_SHARDS", f"['{world / 'sa1b'}/*.tar']",
        "MODEL.UNIOVSEG.ALIGNMENT.TRAIN_MASK_BRANCH", "True",
        "MODEL.UNIOVSEG.ALIGNMENT.MASK_TRAIN_DATASETS", "['sa1b_train']",
        "MODEL.UNIOVSEG.ALIGNMENT.MASK_IMS_PER_BATCH", "1",
    ]  # fmt: skip
    trainer = _train_in_process("configs/tiny/stage2_tiny.yaml", opts, tmp_path / "out")
    losses = trainer.storage.latest()
    assert any(k.startswith("loss_align") for k in losses) and "loss_mask_bce_point" in losses
    saved = torch.load(tmp_path / "out" / "model_final.pth", weights_only=True)
    loaders = saved["trainer"]["hooks"]["StreamCheckpointHook"]["loaders"]
    assert sorted(loaders) == ["mask_train", "train"]


def _train_net(
    world: Path, output: Path, max_iter: int, *extra: str, launcher: tuple[str, ...] = ()
) -> subprocess.Popen:
    """Starts train_net.py (under ``launcher`` when given); its output goes to ``output.log`` (a
    pipe that nobody reads while it runs would fill up and block it)."""
    command = [
        sys.executable, *launcher, "train_net.py", *extra,
        "--config-file", "configs/tiny/stage1_tiny.yaml",
        "DATASETS.TRAIN", "('sa1b_train',)",
        "DATASETS.UNIOVSEG.SA1B_SHARDS", f"['{world / 'sa1b'}']",
        "DATALOADER.UNIOVSEG.SAMPLE_LOG", "True",
        # no scale jitter: the mapper keeps every image, so every sample reaches the log
        "INPUT.UNIOVSEG.MIN_SCALE", "1.0", "INPUT.UNIOVSEG.MAX_SCALE", "1.0",
        "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "3",
        "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(output),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    with open(f"{output}.log", "a") as log:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill reaches the spawned ranks
        )  # fmt: skip


def _trained_samples(output: Path) -> dict[int, list[tuple[str, int]]]:
    """Per iteration, the samples of every rank, from the last log line of that iteration (a
    resumed run logs the iterations after its checkpoint again)."""
    per_iteration: dict[int, list] = defaultdict(list)
    for log in sorted(output.glob("sample_log/rank*.jsonl")):
        last = {}
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            last[entry["iter"]] = [tuple(s) for s in entry["samples"]]
        for iteration, samples in last.items():
            per_iteration[iteration].extend(samples)
    return dict(per_iteration)


@pytest.mark.slow
def test_two_process_run_killed_and_resumed_sees_every_sample_once_per_epoch(world, tmp_path):
    output = tmp_path / "run"
    # 2 ranks x 0 workers = 2 slots, 2 shards of 2 images: a slot's epoch is 2 iterations.
    # --dist-url auto: a free port (the default port is fixed per user, shared with other runs).
    first = _train_net(world, output, 60, "--num-gpus", "2", "--dist-url", "auto")
    checkpoint = output / "model_0000002.pth"  # saved at iteration 2, mid-epoch 1
    deadline = time.monotonic() + 600
    # Killed once it trained past the checkpoint: those iterations are trained again.
    while not (checkpoint.is_file() and max(_trained_samples(output), default=0) >= 3):
        if first.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert checkpoint.is_file(), Path(f"{output}.log").read_text()[-4000:]

    # Resumed under torchrun (its variables give the ranks): the other way clusters launch.
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    resumed = _train_net(world, output, 8, "--resume", launcher=torchrun)
    assert resumed.wait(timeout=900) == 0, Path(f"{output}.log").read_text()[-4000:]
    log = Path(f"{output}.log").read_text()
    start = int(log.split("Starting training from iteration ")[-1].split()[0])  # the resumed run
    assert 3 <= start < 8  # from the checkpoint the kill left (iteration 2 or 5)

    trained = _trained_samples(output)
    assert sorted(trained) == list(range(8))
    by_epoch: dict[int, Counter] = defaultdict(Counter)
    for samples in trained.values():
        for name, epoch in samples:
            by_epoch[epoch][name] += 1
    all_samples = {f"{i:06d}.tar/sa_{1000001 + 2 * i + j}" for i in range(2) for j in range(2)}
    assert sorted(by_epoch) == [0, 1, 2, 3]
    for epoch, counts in by_epoch.items():
        assert set(counts) == all_samples and set(counts.values()) == {1}, (epoch, counts)


def test_shard_specs_expand_folders_patterns_and_globs(world):
    folder = world / "captions"
    expected = [str(folder / f"{i:06d}.tar") for i in range(3)]
    assert expand_shard_specs([str(folder)]) == expected
    assert expand_shard_specs([f"{folder}/{{000000..000002}}.tar"]) == expected
    assert expand_shard_specs([f"{folder}/*.tar", expected[0]]) == expected  # no duplicates
    remote = "pipe:aws s3 cp s3://bucket/{0..1}.tar -"
    with pytest.raises(ValueError, match="UNIOVSEG_ALLOW_PIPE_SHARDS=1"):
        expand_shard_specs([remote])  # a shell command, from a config: refused by default
    with pytest.MonkeyPatch.context() as env:
        env.setenv("UNIOVSEG_ALLOW_PIPE_SHARDS", "1")
        assert expand_shard_specs([remote]) == [remote.replace("{0..1}", i) for i in "01"]
    url = "https://example.org/shards/{0..1}.tar"
    assert expand_shard_specs([url]) == [url.replace("{0..1}", i) for i in "01"]
    with pytest.raises(ValueError, match="tools/write_shards.py"):
        expand_shard_specs([f"{folder}/{{000000..000003}}.tar"])
    with pytest.raises(ValueError, match="matches no file"):
        expand_shard_specs([f"{folder}/*.tgz"])


def test_missing_shards_stop_the_run_at_start_up_with_the_config_key(tmp_path):
    from uniovseg.data.datasets import check_datasets, register_training_datasets

    try:
        register_training_datasets(sa1b_shards=[str(tmp_path / "sa_{000000..000001}.tar")])
        with pytest.raises(ValueError, match="DATASETS.UNIOVSEG.SA1B_SHARDS"):
            check_datasets(["sa1b_train"])
    finally:
        register_training_datasets()


def test_incomplete_shard_samples_are_refused_and_captions_read_from_json():
    assert sa1b_sample_to_dict({"__key__": "sa_1", "__url__": "a.tar", "jpg": b"x"}) is None
    record = caption_sample_to_dict(
        {
            "__key__": "000000007",
            "__url__": "/data/00000.tar",
            "png": b"x",
            "json": json.dumps({"caption": " a dog ", "entities": ["dog"]}).encode(),
        }
    )
    assert record["caption"] == "a dog" and record["entities"] == ["dog"]
    assert record["image_id"] == 7 and record["file_name"] == "00000.tar/000000007"
    assert caption_sample_to_dict({"__key__": "1", "jpg": b"x", "txt": b"  "}) is None


def test_the_caption_file_check_can_be_switched_off(tmp_path):
    from detectron2.data import DatasetCatalog

    from uniovseg.data.datasets import register_training_datasets

    manifest = tmp_path / "captions.jsonl"
    manifest.write_text(json.dumps({"image": "missing.jpg", "caption": "a cat"}) + "\n")
    try:
        register_training_datasets(caption_manifest=str(manifest))
        assert DatasetCatalog.get("captions_train") == []
        register_training_datasets(caption_manifest=str(manifest), caption_check_files=False)
        assert [d["caption"] for d in DatasetCatalog.get("captions_train")] == ["a cat"]
    finally:
        register_training_datasets()


def test_an_interrupted_conversion_leaves_only_complete_shards(world, tmp_path, monkeypatch):
    from uniovseg.data import shard_writer

    calls = []
    read = shard_writer._read_bytes

    def failing_read(path):
        calls.append(path)
        if len(calls) > 6:  # the fourth image: the second shard is half written
            raise KeyboardInterrupt
        return read(path)

    monkeypatch.setattr(shard_writer, "_read_bytes", failing_read)
    output = tmp_path / "shards"
    with pytest.raises(KeyboardInterrupt):
        shard_writer.write_sa1b_shards(str(world / "world" / "sa1b"), str(output),
                                       samples_per_shard=2)  # fmt: skip
    assert sorted(p.name for p in output.iterdir()) == ["000000.tar"]
    assert len(_raw_samples([str(output / "000000.tar")])) == 2
