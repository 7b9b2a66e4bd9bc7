#!/usr/bin/env python
"""Train or evaluate uniovseg with detectron2's trainer; ``--help`` lists the configs, the
dataset keys and examples. The command lives in :mod:`uniovseg.engine.train_cli` (also installed
as ``uniovseg-train``).

Examples:
    python train_net.py --config-file configs/tiny/stage1_tiny.yaml
    python train_net.py --config-file CONFIG --resume                     # continue a killed run
    python train_net.py --config-file CONFIG --num-gpus 8                 # one machine, 8 GPUs
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth
"""

import os
import sys

if __name__ == "__main__":
    # Python puts this file's folder first on sys.path, so uniovseg is found from any working
    # directory, and configs/... names resolve to the packaged configs (uniovseg.model_zoo).
    from uniovseg.engine.train_cli import main

    sys.exit(main(prog=f"python {os.path.basename(sys.argv[0])}"))
