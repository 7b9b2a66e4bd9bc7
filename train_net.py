"""Train or evaluate uniovseg with detectron2's trainer.

Examples:
    python train_net.py --config-file configs/tiny/stage1_tiny.yaml
    python train_net.py --config-file CONFIG --resume                     # continue a killed run
    python train_net.py --config-file CONFIG --num-gpus 8                 # one machine, 8 GPUs
    python train_net.py --config-file CONFIG --num-gpus 2 --num-machines 2 --machine-rank 0 \
        --dist-url tcp://HOST:PORT                                        # multi-machine
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth
On a CPU-only machine `--num-gpus N` starts N processes that talk over gloo.
"""

import json
import logging
import os

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import uniovseg.data.datasets  # noqa: F401  (registers datasets, lazily)
import uniovseg.modeling  # noqa: F401  (registers the meta-architecture and backbone)
from uniovseg.checkpoint import UniOVSegCheckpointer
from uniovseg.config import load_config
from uniovseg.engine.trainer import Trainer


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="uniovseg")
    # setup_logger enables DEBUG; per-image debug lines would drown the training log.
    logging.getLogger("uniovseg").setLevel(logging.INFO)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        UniOVSegCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            # Machine-readable copy for scripts (e.g. the quickstart's final table).
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            with open(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), "w") as handle:
                json.dump(results, handle, indent=2, default=float)
            from uniovseg.evaluation.results_table import format_run_results, normalize_test_results

            table = format_run_results(normalize_test_results(results, cfg.DATASETS.TEST))
            logging.getLogger("uniovseg").info("Results in the paper's layout:\n%s", table)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    logging.getLogger("uniovseg").info("Command line arguments: %s", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
