"""Runs one training process per GPU as cluster launchers start them: torchrun or SLURM's srun.

detectron2's ``launch`` (``--num-gpus N``) spawns the N processes of a machine itself. Clusters
usually start them instead: ``torchrun --nproc-per-node 8 ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``srun`` with one task
per GPU sets ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_NTASKS_PER_NODE`` /
``SLURM_TASKS_PER_NODE`` and ``SLURM_JOB_NODELIST``. :func:`cluster_process` reads them;
:func:`run_cluster_process` joins the process group as detectron2's launcher does (the same
backend, the per-machine group that ``comm.get_local_rank()`` uses, the GPU of the local rank)
and runs the training function in this process.

Under SLURM the rendezvous is ``MASTER_ADDR:MASTER_PORT`` when set (``export MASTER_ADDR=$(scontrol
show hostnames $SLURM_JOB_NODELIST | head -n 1)`` in the batch script), else the first host of
``SLURM_JOB_NODELIST`` and a port derived from ``SLURM_JOB_ID`` (the same on every task).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["ClusterProcess", "cluster_process", "first_slurm_host", "run_cluster_process"]

logger = logging.getLogger(__name__)

# detectron2's DEFAULT_TIMEOUT for the process group.
_TIMEOUT = datetime.timedelta(minutes=30)
# Ports derived from the SLURM job id: 20000 + (id mod 20000), away from the usual services.
_SLURM_PORT_BASE = 20000


@dataclass(frozen=True)
class ClusterProcess:
    """This process's place in a run started by a cluster launcher.

    Attributes:
        rank: Global rank.
        world_size: Number of processes.
        local_rank: Rank on this machine (its GPU).
        local_world_size: Processes on this machine.
        dist_url: The rendezvous: ``env://`` under torchrun (``MASTER_ADDR:MASTER_PORT``, the
            store of torchrun's agent), ``tcp://HOST:PORT`` under SLURM.
        launcher: ``"torchrun"`` or ``"slurm"``.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    dist_url: str
    launcher: str


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``"gpu[003-009],gpu012"`` -> ``"gpu003"``).

    Raises:
        ValueError: An empty or malformed list.
    """
    match = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _slurm_tasks_on_node(environ: Mapping[str, str]) -> int:
    per_node = environ.get("SLURM_NTASKS_PER_NODE", "")
    if per_node.isdigit():
        return int(per_node)
    # SLURM_TASKS_PER_NODE: "8(x7)" or "8,4(x2)": this node's count is not said; the first
    # node's is what a uniform allocation has on every node.
    match = re.match(r"^(\d+)", environ.get("SLURM_TASKS_PER_NODE", ""))
    if not match:
        raise ValueError("SLURM_TASKS_PER_NODE is not set: start one task per GPU with srun")
    return int(match.group(1))


def cluster_process(environ: Mapping[str, str] | None = None) -> ClusterProcess | None:
    """This process's place in a torchrun or multi-task SLURM run; None when neither started it
    (or started a single process).

    Raises:
        ValueError: The launcher's variables are incomplete or inconsistent.
    """
    environ = os.environ if environ is None else environ
    if "LOCAL_RANK" in environ and "WORLD_SIZE" in environ and "RANK" in environ:
        world_size = int(environ["WORLD_SIZE"])
        if world_size <= 1:
            return None
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(k)]
        if missing:
            raise ValueError(f"torchrun variables without {' and '.join(missing)}")
        local_rank = int(environ["LOCAL_RANK"])
        local_world = int(environ.get("LOCAL_WORLD_SIZE", world_size))
        # env:// reads MASTER_ADDR/PORT and joins the store that torchrun's agent already serves.
        return ClusterProcess(
            int(environ["RANK"]), world_size, local_rank, local_world, "env://", "torchrun"
        )
    if "SLURM_PROCID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
        world_size = int(environ["SLURM_NTASKS"])
        host = environ.get("MASTER_ADDR") or first_slurm_host(environ.get("SLURM_JOB_NODELIST", ""))
        port = environ.get("MASTER_PORT") or str(
            _SLURM_PORT_BASE + int(environ.get("SLURM_JOB_ID", "0")) % 20000
        )
        return ClusterProcess(
            int(environ["SLURM_PROCID"]),
            world_size,
            int(environ.get("SLURM_LOCALID", "0")),
            _slurm_tasks_on_node(environ),
            f"tcp://{host}:{port}",
            "slurm",
        )
    return None


def run_cluster_process(process: ClusterProcess, main_func: Callable, args: tuple = ()) -> None:
    """Joins the process group of ``process`` and runs ``main_func(*args)`` in this process.

    As detectron2's ``launch`` does for each process it spawns: NCCL when CUDA is available
    (GLOO otherwise), the machine-local group of ``local_world_size`` processes, and the GPU
    ``local_rank`` (modulo the GPUs this process sees, for ``srun --gpus-per-task 1``).
    """
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    if process.world_size % process.local_world_size:
        raise ValueError(
            f"{process.launcher}: {process.world_size} processes do not fill machines of "
            f"{process.local_world_size}; start the same number of processes on every machine"
        )
    has_gpu = torch.cuda.is_available()
    logger.info(
        "%s process %d/%d (local %d/%d), rendezvous %s",
        process.launcher,
        process.rank,
        process.world_size,
        process.local_rank,
        process.local_world_size,
        process.dist_url,
    )
    dist.init_process_group(
        backend="NCCL" if has_gpu else "GLOO",
        init_method=process.dist_url,
        world_size=process.world_size,
        rank=process.rank,
        timeout=_TIMEOUT,
    )
    comm.create_local_process_group(process.local_world_size)
    if has_gpu:
        torch.cuda.set_device(process.local_rank % torch.cuda.device_count())
    comm.synchronize()
    main_func(*args)
