"""Cluster launchers and DDP settings: ranks from torchrun's and SLURM's variables, the command
refusing detectron2's spawn flags under torchrun, and the unused-parameter search only for the
configs that leave trainable parameters out of a batch."""

import argparse

import pytest

from uniovseg.config import load_config
from uniovseg.engine import train_cli
from uniovseg.engine.ddp import ddp_options, needs_unused_parameter_search
from uniovseg.engine.launch import ClusterProcess, cluster_process, first_slurm_host

TORCHRUN = {
    "RANK": "9", "WORLD_SIZE": "56", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8",
    "MASTER_ADDR": "node0", "MASTER_PORT": "29500",
}  # fmt: skip
SLURM = {
    "SLURM_PROCID": "17", "SLURM_NTASKS": "56", "SLURM_LOCALID": "1",
    "SLURM_TASKS_PER_NODE": "8(x7)", "SLURM_JOB_NODELIST": "gpu[003-009]", "SLURM_JOB_ID": "4242",
}  # fmt: skip


def test_torchrun_variables_give_the_rank_and_rendezvous():
    assert cluster_process(TORCHRUN) == ClusterProcess(9, 56, 1, 8, "env://", "torchrun")
    assert cluster_process({**TORCHRUN, "WORLD_SIZE": "1", "RANK": "0"}) is None
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        cluster_process({k: v for k, v in TORCHRUN.items() if k != "MASTER_ADDR"})


def test_slurm_variables_give_the_rank_and_the_first_host():
    process = cluster_process(SLURM)
    assert process == ClusterProcess(17, 56, 1, 8, "tcp://gpu003:24242", "slurm")
    explicit = cluster_process({**SLURM, "MASTER_ADDR": "head", "MASTER_PORT": "1234"})
    assert explicit.dist_url == "tcp://head:1234"
    assert cluster_process({**SLURM, "SLURM_NTASKS": "1"}) is None  # a single task
    assert cluster_process({}) is None


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [("gpu003", "gpu003"), ("gpu[003-009]", "gpu003"), ("a[7,9-12],b[1-2]", "a7"), ("x1,x2", "x1")],
)
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def _args(*flags: str) -> argparse.Namespace:
    return train_cli.build_parser().parse_args(["--config-file", "c.yaml", *flags])


def test_spawn_flags_under_torchrun_are_refused(monkeypatch):
    for key, value in TORCHRUN.items():
        monkeypatch.setenv(key, value)
    assert train_cli._cluster_process(_args()).rank == 9
    with pytest.raises(ValueError, match="torchrun started 56 processes"):
        train_cli._cluster_process(_args("--num-gpus", "8"))


def test_slurm_with_detectron2_flags_uses_detectron2s_launcher(monkeypatch):
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    assert train_cli._cluster_process(_args("--num-gpus", "8", "--num-machines", "7")) is None


@pytest.mark.parametrize(
    ("config", "opts", "needed"),
    [
        ("configs/tiny/stage1_tiny.yaml", [], False),
        ("configs/stage1/uniovseg_convnext_large_stage1.yaml", [], False),
        ("configs/tiny/stage1_tiny.yaml", ["MODEL.UNIOVSEG.TRAIN_PROMPT_TYPES", "['point']"], True),
        (
            "configs/tiny/stage1_tiny.yaml",
            ["INPUT.UNIOVSEG.SKIP_IMAGES_WITHOUT_MASKS", "False"],
            True,
        ),
        (
            "configs/tiny/stage1_tiny.yaml",
            ["MODEL.UNIOVSEG.DDP_FIND_UNUSED_PARAMETERS", "True"],
            True,
        ),
        ("configs/stage2/uniovseg_convnext_large_stage2.yaml", [], False),
        (
            "configs/tiny/stage2_tiny.yaml",
            ["MODEL.UNIOVSEG.ALIGNMENT.TRAIN_MASK_BRANCH", "True"],
            True,
        ),
        (
            "configs/tiny/stage2_tiny.yaml",
            [
                "MODEL.UNIOVSEG.ALIGNMENT.TRAIN_MASK_BRANCH",
                "True",
                "MODEL.UNIOVSEG.ALIGNMENT.MASK_TRAIN_DATASETS",
                "['sa1b_train']",
            ],
            False,
        ),  # fmt: skip
    ],
)
def test_unused_parameter_search_only_where_a_batch_leaves_parameters_out(config, opts, needed):
    assert needs_unused_parameter_search(load_config(config, opts)) is needed


def test_ddp_options_for_a_cpu_model():
    import torch

    options = ddp_options(load_config("configs/tiny/stage1_tiny.yaml"), torch.nn.Linear(2, 2))
    assert options == {
        "broadcast_buffers": False,
        "gradient_as_bucket_view": True,
        "find_unused_parameters": False,
        "device_ids": None,
    }
