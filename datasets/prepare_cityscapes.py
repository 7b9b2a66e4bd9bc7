#!/usr/bin/env python
"""Derives Cityscapes' train-id labels and COCO-format panoptic annotations (no cityscapesScripts
needed) for ``cityscapes_sem_seg_val`` and ``cityscapes_panoptic_val``.

Writes ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``, ``gtFine/cityscapes_panoptic_
<split>.json`` and ``gtFine/cityscapes_panoptic_<split>/`` under ``<root>/cityscapes``: the
files cityscapesScripts' createTrainIdLabelImgs / createPanopticImgs would write.

Usage:
    python datasets/prepare_cityscapes.py [--root DIR] [--split val]
"""

from __future__ import annotations

import argparse
import sys

from uniovseg.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    setup_logging()  # first: it silences known warnings of the imports below
    from uniovseg.data.datasets.conversion.progress import (
        ConversionRun,
        add_conversion_arguments,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    add_conversion_arguments(parser)
    args = parser.parse_args(argv)
    run = ConversionRun.from_args(args, "Cityscapes")

    from uniovseg.data.datasets.benchmarks import default_datasets_root
    from uniovseg.data.datasets.conversion.cityscapes import prepare_cityscapes

    try:
        path = prepare_cityscapes(
            args.root or default_datasets_root(),
            split=args.split,
            overwrite=args.overwrite,
            run=run,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return run.finish(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
