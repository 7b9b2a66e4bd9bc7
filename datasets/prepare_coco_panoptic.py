#!/usr/bin/env python
"""Writes the semantic view of COCO panoptic for ``coco_panoptic_sem_seg_val``.

``coco_panoptic_val`` reads the official files as they are; this adds
``coco/panoptic_semseg_<split>/*.png`` (133 classes in category-id order, 255 = ignore).

Usage:
    python datasets/prepare_coco_panoptic.py [--root DIR] [--split val2017]
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
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    add_conversion_arguments(parser)
    args = parser.parse_args(argv)
    run = ConversionRun.from_args(args, "COCO panoptic -> semantic")

    from uniovseg.data.datasets.benchmarks import default_datasets_root
    from uniovseg.data.datasets.conversion.coco_panoptic import prepare_coco_panoptic_semantic

    try:
        count = prepare_coco_panoptic_semantic(
            args.root or default_datasets_root(),
            split=args.split,
            overwrite=args.overwrite,
            run=run,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return run.finish(f"wrote {count} semantic label files")


if __name__ == "__main__":
    sys.exit(main())
