"""The training and evaluation command: ``python train_net.py`` and ``uniovseg-train``.

:func:`main` parses the command line before it imports torch or detectron2 (``--help`` is
instant), sets up logging (:mod:`uniovseg.logs`), loads the config, registers the datasets and
checks, before any model is built, that the run can go ahead: its datasets exist (the message
names the missing path and the command that creates it), and ``--eval-only`` has weights to
evaluate. Then detectron2's launcher runs :func:`run` in one process per GPU. An evaluation
stops once the weights are loaded when the checkpoint does not fit the model, e.g. a stage-2
adapter that a config with alignment off would leave unused (:func:`check_evaluated_weights`).

Evaluation writes each evaluator's files to ``OUTPUT_DIR/inference/<dataset>/`` and the metrics
to ``OUTPUT_DIR/eval_results.json`` (strict JSON: a NaN metric, e.g. the IoU of a class absent
from the dataset, is written as ``null``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import os
import sys
from collections.abc import Mapping, Sequence

__all__ = [
    "build_config",
    "build_parser",
    "check_evaluated_weights",
    "check_run",
    "main",
    "run",
    "setup",
    "write_eval_results",
]

logger = logging.getLogger(__name__)

EVAL_RESULTS_FILE = "eval_results.json"

_DESCRIPTION = """\
Train or evaluate Uni-OVSeg (detectron2 trainer). Stage 1 learns promptable masks from SA-1B
image-mask pairs; stage 2 aligns mask embeddings with caption entities; --eval-only evaluates
weights on the paper's benchmarks."""

_EPILOG = """\
configs (detectron2 YAML with _BASE_; every key is documented in uniovseg/config.py):
  configs/stage1/uniovseg_convnext_large_stage1.yaml  stage 1 on SA-1B (dataset sa1b_train)
  configs/stage2/uniovseg_convnext_large_stage2.yaml  stage 2 on captions (captions_train),
                                                      from stage-1 weights (MODEL.WEIGHTS)
  configs/eval/benchmarks.yaml, cityscapes.yaml       the paper's benchmarks, with --eval-only,
                                                      for stage-2 weights (adapter used)
  configs/eval/benchmarks_baseline.yaml, ...          the same, the paper's baseline (no adapter)
  configs/synthetic/stage1.yaml, stage2.yaml          the quickstart's synthetic world
  configs/tiny/stage1_tiny.yaml, stage2_tiny.yaml     tiny random models for CPU smoke tests

training data (config keys; empty = the default under $DETECTRON2_DATASETS, else ./datasets):
  DATASETS.UNIOVSEG.SA1B_ROOT         untarred SA-1B, default $DETECTRON2_DATASETS/sa1b;
                                      index it once: python datasets/prepare_sa1b.py --root DIR
  DATASETS.UNIOVSEG.SA1B_FRACTION     fraction of the indexed images used (paper: 0.3)
  DATASETS.UNIOVSEG.CAPTION_MANIFEST  JSON-lines captions, default
                                      $DETECTRON2_DATASETS/captions/captions_entities.jsonl;
                                      write it with: python tools/extract_entities.py
                                      --manifest captions.jsonl --output FILE
                                      [--backend llm --base-url URL --model NAME]
                                      (tools/refine_captions.py rewrites captions first)
  DATASETS.UNIOVSEG.SA1B_SHARDS       stream SA-1B from tars instead ("['/data/sa1b']": its
                                      official sa_*.tar, or tools/write_shards.py output)
  DATASETS.UNIOVSEG.CAPTION_SHARDS    stream captions from WebDataset shards (img2dataset's
                                      key.jpg/key.txt/key.json tars) instead of the manifest
  DATASETS.UNIOVSEG.PROMPTABLE_COCO_JSONS  [[NAME, IMAGE_DIR, COCO_JSON], ...]: extra
                                      promptable evaluation sets (evaluate with DATASETS.TEST)
  evaluation datasets and how to prepare them: datasets/README.md

examples:
  %(prog)s --config-file configs/stage1/uniovseg_convnext_large_stage1.yaml --num-gpus 8
  %(prog)s --config-file CONFIG --num-gpus 8 --resume    # continue a killed run
  %(prog)s --config-file configs/stage2/uniovseg_convnext_large_stage2.yaml --num-gpus 8 \\
      MODEL.WEIGHTS output/stage1/model_final.pth
  %(prog)s --config-file configs/eval/benchmarks.yaml --eval-only MODEL.WEIGHTS model.pth
  %(prog)s --config-file CONFIG --num-gpus 8 --num-machines 2 --machine-rank 0 \\
      --dist-url tcp://HOST:PORT                         # multi-machine, run on each machine
On a machine without CUDA, --num-gpus N starts N processes that talk over gloo.

cluster launchers (one process per GPU; no --num-gpus: the launcher's variables give the ranks):
  torchrun --nproc-per-node 8 train_net.py --config-file CONFIG         # 1 machine x 8 GPUs
  torchrun --nnodes 7 --nproc-per-node 8 --rdzv-backend c10d \\
      --rdzv-endpoint HOST0:29500 train_net.py --config-file CONFIG       # on each of 7 machines
  srun --nodes 7 --ntasks-per-node 8 --gpus-per-node 8 \\
      python train_net.py --config-file CONFIG                            # SLURM, 7 x 8 GPUs
  (SLURM: the first host of the allocation is the rendezvous unless MASTER_ADDR/MASTER_PORT
  are set; README "Training at scale" has a full sbatch script)"""


def _default_dist_url() -> str:
    # detectron2's rule: a port fixed per user, so that an orphan run shows as a port in use.
    port = 2**15 + 2**14 + hash(os.getuid() if sys.platform != "win32" else 1) % 2**14
    return f"tcp://127.0.0.1:{port}"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line: detectron2's launcher flags plus ``--allow-random-weights`` and
    ``--verbose``. Imports nothing heavy."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="YAML config: a file, or a packaged config such as "
        "configs/stage1/uniovseg_convnext_large_stage1.yaml (found from any folder)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest intact checkpoint in OUTPUT_DIR (else start from "
        "MODEL.WEIGHTS)",
    )
    parser.add_argument(
        "--eval-only", action="store_true", help="evaluate on DATASETS.TEST instead of training"
    )
    parser.add_argument(
        "--allow-random-weights",
        action="store_true",
        help="with --eval-only: evaluate even though MODEL.WEIGHTS is empty (random decoders; "
        "smoke tests only)",
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="processes (GPUs) per machine")
    parser.add_argument("--num-machines", type=int, default=1, help="number of machines")
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="rank of this machine (unique per machine)"
    )
    parser.add_argument(
        "--dist-url",
        default=_default_dist_url(),
        help="URL of the process group's rendezvous (tcp://HOST:PORT of machine 0)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug lines and third-party INFO lines"
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides after the flags, e.g. MODEL.WEIGHTS model.pth SOLVER.BASE_LR 1e-4",
    )
    return parser


def build_config(args: argparse.Namespace):
    """The frozen config of a run: file, overrides, and the resolved training-data paths.

    ``args.config_file`` is replaced by the file actually read (a packaged config when the
    path does not exist from the working directory), which detectron2's set-up logs and
    every spawned process reads again.
    """
    from uniovseg.config import load_config
    from uniovseg.data.datasets.training import resolve_dataset_paths
    from uniovseg.model_zoo import resolve_config_file

    opts = list(args.opts or [])
    flags = [o for o in opts if o.startswith("--")]
    if flags:
        raise ValueError(
            f"{' '.join(flags)} came after the config overrides: put every --flag before the "
            "KEY VALUE pairs"
        )
    args.config_file = resolve_config_file(args.config_file)
    cfg = load_config(args.config_file, opts)
    resolve_dataset_paths(cfg)
    cfg.freeze()
    return cfg


def _has_checkpoint(output_dir: str) -> bool:
    import torch

    from uniovseg.checkpoint import UniOVSegCheckpointer

    checkpointer = UniOVSegCheckpointer(torch.nn.Module(), save_dir=output_dir, save_to_disk=False)
    return checkpointer.has_checkpoint()


def check_run(cfg, args: argparse.Namespace) -> None:
    """Registers the datasets of ``cfg`` and checks that the run can start; builds no model.

    Raises:
        ValueError: A dataset is missing or not registered, or ``--eval-only`` has no weights
            (MODEL.WEIGHTS empty and no checkpoint to ``--resume`` from) without
            ``--allow-random-weights``.
    """
    import uniovseg.data.datasets as datasets

    datasets.register_training_datasets_from_config(cfg)
    datasets.register_promptable_datasets_from_config(cfg)
    if args.eval_only:
        datasets.check_datasets(cfg.DATASETS.TEST, what="DATASETS.TEST")
        if not cfg.DATASETS.TEST:
            raise ValueError(
                "--eval-only with an empty DATASETS.TEST: use an evaluation config "
                "(configs/eval/benchmarks.yaml) or set, after the flags, "
                "DATASETS.TEST \"('ade20k_150_sem_seg_val',)\""
            )
        has_weights = bool(cfg.MODEL.WEIGHTS) or (args.resume and _has_checkpoint(cfg.OUTPUT_DIR))
        if not has_weights and not getattr(args, "allow_random_weights", False):
            raise ValueError(
                "--eval-only without weights would evaluate a randomly initialised model: pass "
                "MODEL.WEIGHTS path/to/model_final.pth after the flags (or --resume with a "
                f"checkpoint in OUTPUT_DIR={cfg.OUTPUT_DIR!r}); add --allow-random-weights to "
                "evaluate random weights on purpose (smoke tests)"
            )
        return
    datasets.check_datasets(cfg.DATASETS.TRAIN, what="DATASETS.TRAIN")
    datasets.check_datasets(
        cfg.MODEL.UNIOVSEG.ALIGNMENT.MASK_TRAIN_DATASETS,
        what="MODEL.UNIOVSEG.ALIGNMENT.MASK_TRAIN_DATASETS",
    )
    if cfg.TEST.EVAL_PERIOD > 0:
        datasets.check_datasets(cfg.DATASETS.TEST, what="DATASETS.TEST")


def check_evaluated_weights(checkpointer, build_cfg) -> None:
    """Stops an evaluation whose checkpoint does not fit the model (see
    :meth:`uniovseg.checkpoint.UniOVSegCheckpointer.check_loaded_weights`): every weight of the
    model must come from the checkpoint, except CLIP's when the model loaded them from
    ``MODEL.UNIOVSEG.CLIP.PRETRAINED`` (a checkpoint without CLIP), and the mismatches that
    ``MODEL.UNIOVSEG.TEST.ALLOWED_WEIGHT_MISMATCH`` accepts.

    Args:
        checkpointer: The checkpointer that loaded the weights.
        build_cfg: The config the model was built with.

    Raises:
        uniovseg.checkpoint.WeightMismatchError: unused, missing or reshaped weights.
    """
    from uniovseg.modeling.build import CLIP_CHECKPOINT_PREFIX

    clip_pretrained = bool(build_cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED)
    checkpointer.check_loaded_weights(
        allowed=list(build_cfg.MODEL.UNIOVSEG.TEST.ALLOWED_WEIGHT_MISMATCH),
        provided=[CLIP_CHECKPOINT_PREFIX] if clip_pretrained else [],
    )


def setup(args: argparse.Namespace):
    """Per process: the config, dataset registration and checks, detectron2's default set-up
    (config.yaml, seeds) and logging with the per-rank log file in OUTPUT_DIR."""
    from detectron2.engine import default_setup
    from detectron2.utils import comm

    from uniovseg.logs import setup_logging

    cfg = build_config(args)
    check_run(cfg, args)
    default_setup(cfg, args)
    setup_logging(
        cfg.OUTPUT_DIR,
        verbose=getattr(args, "verbose", False),
        distributed_rank=comm.get_rank(),
    )
    return cfg


def _json_safe(value):
    """``value`` with NaN/inf floats as None and numpy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to {EVAL_RESULTS_FILE}")


def _count_non_finite(value) -> int:
    if isinstance(value, Mapping):
        return sum(_count_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_non_finite(v) for v in value)
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return int(is_real and not math.isfinite(float(value)))


def write_eval_results(results: Mapping, path: str) -> str:
    """Writes ``{dataset: {task: {metric: value}}}`` as strict JSON (NaN and inf as null),
    atomically.

    Returns:
        ``path``.
    """
    payload = _json_safe(results)
    missing = _count_non_finite(results)
    if missing:
        logger.info(
            "%s: %d metrics are not finite (e.g. the IoU of a class absent from the dataset) and "
            "are written as null",
            path,
            missing,
        )
    from uniovseg.atomic_files import atomic_write

    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, allow_nan=False)
        handle.write("\n")
    return path


def run(args: argparse.Namespace):
    """One process of the run (detectron2's launcher calls it once per GPU).

    Returns:
        The evaluation results with ``--eval-only``, else what the trainer returns.
    """
    from detectron2.utils import comm

    import uniovseg.modeling  # noqa: F401  (registers the meta-architecture and backbone)
    from uniovseg.checkpoint import UniOVSegCheckpointer
    from uniovseg.engine.trainer import Trainer

    cfg = setup(args)
    if not args.eval_only:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()

    # A checkpoint that holds the CLIP weights makes downloading them pointless (and impossible
    # offline); with --resume the file to load is only known to the checkpointer.
    build_cfg = cfg
    if cfg.MODEL.WEIGHTS and not args.resume:
        from uniovseg.modeling.build import cfg_without_clip_download

        build_cfg = cfg_without_clip_download(cfg, cfg.MODEL.WEIGHTS)
    model = Trainer.build_model(build_cfg)
    checkpointer = UniOVSegCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
    if checkpointer.incompatible_keys is None:
        logger.warning("Evaluating random weights (--allow-random-weights): no weights were loaded")
    else:
        check_evaluated_weights(checkpointer, build_cfg)
    results = Trainer.test(cfg, model)
    if comm.is_main_process():
        from uniovseg.evaluation.results_table import format_run_results, normalize_test_results

        by_dataset = normalize_test_results(results, cfg.DATASETS.TEST)
        path = write_eval_results(by_dataset, os.path.join(cfg.OUTPUT_DIR, EVAL_RESULTS_FILE))
        logger.info("Metrics written to %s", path)
        logger.info("Results in the paper's layout:\n%s", format_run_results(by_dataset))
    return results


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Runs the command; returns the exit status (2: the run was refused before it started, or
    an evaluation's checkpoint does not fit the model).

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        prog: Program name shown by ``--help`` (default: from ``sys.argv[0]``).
    """
    args = build_parser(prog).parse_args(argv)
    from uniovseg.logs import setup_logging

    setup_logging(verbose=args.verbose)
    try:
        cfg = build_config(args)
        check_run(cfg, args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return 2
    from detectron2.engine import launch

    from uniovseg.checkpoint import WeightMismatchError
    from uniovseg.engine.launch import run_cluster_process

    try:
        process = _cluster_process(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if process is not None:
            run_cluster_process(process, run, (args,))
        else:
            launch(
                run,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
            )
    except WeightMismatchError as e:  # raised in this process when it runs the only worker
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _cluster_process(args: argparse.Namespace):
    """This process's rank when torchrun or srun started it (one process per GPU), else None:
    then detectron2's launcher spawns ``--num-gpus`` processes itself.

    Raises:
        ValueError: torchrun started this process and ``--num-gpus``/``--num-machines`` ask for
            more processes on top of it.
    """
    from uniovseg.engine.launch import cluster_process

    process = cluster_process()
    spawn_flags = args.num_gpus != 1 or args.num_machines != 1
    if process is None or not spawn_flags:
        return process
    if process.launcher == "torchrun":
        raise ValueError(
            f"torchrun started {process.world_size} processes, one per GPU: leave out "
            "--num-gpus/--num-machines/--machine-rank/--dist-url (they are for detectron2's own "
            "launcher, which would spawn more processes inside each one)"
        )
    # srun with one task per machine and detectron2's flags: the flags decide.
    logger.info("SLURM tasks with --num-gpus/--num-machines: detectron2's launcher spawns them")
    return None
