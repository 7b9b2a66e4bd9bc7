#!/usr/bin/env python
"""Converts PASCAL Context (459 and 59 classes) for ``pascal_context_{459,59}_sem_seg_val``.

Needs VOC2010 (``VOCdevkit/VOC2010``) with PASCAL Context's ``trainval/*.mat``, ``labels.txt`` and
``59_labels.txt`` in it. Writes ``VOC2010/annotations_detectron2/pc459_val/*.tif`` (16-bit,
0-458, 65535 = ignore) and ``pc59_val/*.png`` (0-58, 255 = ignore) for the images of
``ImageSets/Main/val.txt`` (PASCAL Context's 5105 validation images).

Usage:
    python datasets/prepare_pascal_context.py [--root DIR] [--split-file ids.txt]
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
    parser.add_argument("--split-file", help="image ids (default: VOC2010/ImageSets/Main/val.txt)")
    parser.add_argument("--labels-file", help="459 class names (default: VOC2010/labels.txt)")
    parser.add_argument("--labels-59-file", help="59 class names (default: VOC2010/59_labels.txt)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    add_conversion_arguments(parser)
    args = parser.parse_args(argv)
    run = ConversionRun.from_args(args, "PASCAL Context")

    from uniovseg.data.datasets.benchmarks import default_datasets_root
    from uniovseg.data.datasets.conversion.pascal import prepare_pascal_context

    try:
        count = prepare_pascal_context(
            args.root or default_datasets_root(),
            split_file=args.split_file,
            labels_file=args.labels_file,
            labels_59_file=args.labels_59_file,
            overwrite=args.overwrite,
            run=run,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return run.finish(f"converted {count} images")


if __name__ == "__main__":
    sys.exit(main())
