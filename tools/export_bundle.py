#!/usr/bin/env python
"""Writes a trained checkpoint as a model bundle (config, safetensors weights, open_clip config and
model card in one folder) that ``UniOVSegPredictor.from_pretrained`` loads by path or hub id.

The model of the config is built with the checkpoint (read safely, see ``uniovseg/checkpoint.py``);
every weight must come from it (CLIP's may come from ``MODEL.UNIOVSEG.CLIP.PRETRAINED`` when the
checkpoint holds none), else nothing is written and the exit status is 1.

Example::

    python tools/export_bundle.py --config-file configs/synthetic/stage2.yaml \\
        --weights output/quickstart/stage2/model_final.pth --output bundles/stage2 \\
        MODEL.UNIOVSEG.CLIP.PRETRAINED output/quickstart/clip/synthetic_clip.pt
"""

from __future__ import annotations

import argparse
import sys

from uniovseg.logs import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config-file", required=True, help="the config the model was trained with"
    )
    parser.add_argument("--weights", required=True, help="the trained checkpoint")
    parser.add_argument(
        "--output", required=True, help="the bundle folder (new, empty or an earlier bundle)"
    )
    parser.add_argument("--training-data", help="what the model was trained on, for the model card")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides the model was trained with"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Writes the bundle; returns the process exit status."""
    from uniovseg.inference.model_bundle import save_checkpoint_bundle

    args = parse_args(argv)
    try:
        folder = save_checkpoint_bundle(
            args.config_file,
            args.weights,
            args.output,
            opts=args.opts,
            training_data=args.training_data,
        )
    except (OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Saved the model bundle {folder}")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main())
