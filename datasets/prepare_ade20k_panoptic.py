#!/usr/bin/env python
"""Builds ADE20K-150 panoptic annotations (COCO format) for ``ade20k_panoptic_val``.

Needs ADEChallengeData2016 (images, annotations), the Places Challenge 2017 instance annotations
unpacked into ``ADEChallengeData2016/annotations_instance/`` and that challenge's
``categoryMapping.txt``. Writes ``ADEChallengeData2016/ade20k_panoptic_val.json`` and
``ade20k_panoptic_val/*.png`` (category ids = SceneParse150 ids 1-150). Run
``prepare_ade20k_sem_seg.py`` as well: the panoptic dataset also points at its semantic labels.

Usage:
    python datasets/prepare_ade20k_panoptic.py [--root DIR] [--mapping-file categoryMapping.txt]
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
    parser.add_argument(
        "--mapping-file",
        help="instance class -> SceneParse150 id table (default: "
        "<root>/ADEChallengeData2016/categoryMapping.txt)",
    )
    parser.add_argument("--split", default="validation", choices=["validation", "training"])
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing PNGs")
    add_conversion_arguments(parser)
    args = parser.parse_args(argv)
    run = ConversionRun.from_args(args, "ADE20K-150 panoptic")

    from uniovseg.data.datasets.benchmarks import default_datasets_root
    from uniovseg.data.datasets.conversion.ade20k import prepare_ade20k_panoptic
    from uniovseg.data.vocabulary import class_display_names, load_vocabulary

    try:
        path = prepare_ade20k_panoptic(
            args.root or default_datasets_root(),
            class_display_names(load_vocabulary("ade20k_150_raw")),
            mapping_file=args.mapping_file,
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
