#!/usr/bin/env python
"""Places a downloaded COCO-format promptable dataset of the paper (Table 5) for evaluation.

Checks the download (the JSON holds instance masks, its images exist) and links it as
``<root>/promptable/<dataset>/images`` and ``annotations.json``, where the dataset
``<dataset>_promptable_val`` is registered (datasets/README.md, "Promptable segmentation").

Usage:
    python datasets/prepare_promptable.py --dataset timberseg \
        --images path/to/images --annotations path/to/instances.json [--root DIR] [--copy]
"""

from __future__ import annotations

import argparse
import sys

from uniovseg.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    setup_logging()  # first: it silences known warnings of the imports below
    from uniovseg.data.datasets.promptable import PAPER_PROMPTABLE_DATASETS

    keys = [s.key for s in PAPER_PROMPTABLE_DATASETS if s.key]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=keys)
    parser.add_argument("--images", required=True, help="the download's image folder")
    parser.add_argument("--annotations", required=True, help="its COCO instances JSON")
    parser.add_argument("--root", help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--copy", action="store_true", help="copy instead of symbolic links")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier placement")
    args = parser.parse_args(argv)

    from uniovseg.data.datasets.benchmarks import default_datasets_root
    from uniovseg.data.datasets.conversion.promptable import prepare_promptable_dataset

    try:
        prepared = prepare_promptable_dataset(
            args.root or default_datasets_root(),
            args.dataset,
            images=args.images,
            annotations=args.annotations,
            copy=args.copy,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"{prepared.name}: {prepared.num_images} images, {prepared.num_masks} instance masks "
        f"({prepared.json_file})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
