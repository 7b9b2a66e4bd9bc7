#!/usr/bin/env python
"""Converts PASCAL VOC 2012 labels for ``pascal_voc_{21,20}_sem_seg_val``.

Writes ``VOCdevkit/VOC2012/annotations_detectron2/pas21_val/*.png`` (0 = background, 1-20,
255 = ignore) and ``pas20_val/*.png`` (0-19; background and boundaries 255).

Usage:
    python datasets/prepare_pascal_voc.py [--root DIR] [--split val]
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
    parser.add_argument("--split", default="val", help="ImageSets/Segmentation/<split>.txt")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    add_conversion_arguments(parser)
    args = parser.parse_args(argv)
    run = ConversionRun.from_args(args, "PASCAL VOC")

    from uniovseg.data.datasets.benchmarks import default_datasets_root
    from uniovseg.data.datasets.conversion.pascal import prepare_pascal_voc

    try:
        count = prepare_pascal_voc(
            args.root or default_datasets_root(),
            split=args.split,
            overwrite=args.overwrite,
            run=run,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return run.finish(f"converted {count} images")


if __name__ == "__main__":
    sys.exit(main())
