#!/usr/bin/env python
"""Classify a panoptic dataset's ground-truth masks by CLIP mask pooling at several input sizes
(the paper's Table 4): top-1 accuracy and seconds per image, beside the paper's numbers.

Each ground-truth segment's mask pools the frozen CLIP's dense features of the image resized to
an input size; the pooled feature, projected into CLIP space, is classified against the
dataset's class names. Size sets (default: each size, then every run of consecutive sizes)
average the per-size class probabilities (the multi-scale ensemble, Eq. 7). Only the CLIP
weights matter: ``MODEL.UNIOVSEG.CLIP.PRETRAINED`` or a checkpoint that holds them
(``MODEL.WEIGHTS``). The test canvas is set to the largest size (``MODEL.UNIOVSEG.TEST.
INPUT_SIZE``, longest side resize). See :mod:`uniovseg.evaluation.mask_classification`.

Usage:
    python tools/classify_gt_masks.py \\
        --config-file configs/stage2/uniovseg_convnext_large_stage2.yaml \\
        --dataset coco_panoptic_val --sizes 768 896 1024 --output table4_coco.json
    # the synthetic world with its pretrained CLIP
    UNIOVSEG_SYNTHETIC_ROOT=WORLD python tools/classify_gt_masks.py \\
        --config-file configs/synthetic/stage1.yaml --dataset synthetic_panoptic_val \\
        --sizes 128 192 256 --output table4_synthetic.json \\
        MODEL.UNIOVSEG.CLIP.PRETRAINED QS/clip/synthetic_clip.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

# Python puts this file's folder first on sys.path; the repository root makes uniovseg
# importable without installing it.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

logger = logging.getLogger("uniovseg.tools.classify_gt_masks")

_MISSING = "-"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="a uniovseg YAML config"
    )
    parser.add_argument(
        "--dataset",
        required=True,
        metavar="NAME",
        help="a registered dataset with panoptic ground truth (coco_panoptic_val, "
        "ade20k_panoptic_val, cityscapes_panoptic_val, synthetic_panoptic_val, ...)",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["768", "896", "1024"],
        metavar="S",
        help="input sides, multiples of 32 (default: Table 4's 768 896 1024); config overrides "
        "may follow them",
    )
    parser.add_argument(
        "--ensemble",
        action="append",
        default=None,
        metavar="S,S",
        help="a size set to report besides the single sizes, e.g. --ensemble 768,896 "
        "--ensemble 896,1024 (default: every run of consecutive sizes, Table 4's rows)",
    )
    parser.add_argument("--no-ensembles", action="store_true", help="report the single sizes only")
    parser.add_argument(
        "--max-images", type=int, default=None, metavar="N", help="only the first N images"
    )
    parser.add_argument("--output", metavar="FILE.json", help="write the results as JSON here")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: config)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ... (after the flags)"
    )
    return parser


def split_sizes(tokens: Sequence[str]) -> tuple[list[int], list[str]]:
    """``--sizes`` tokens -> (the leading integers, the rest: config overrides that followed).

    Raises:
        ValueError: no integer leads.
    """
    sizes: list[int] = []
    for index, token in enumerate(tokens):
        try:
            sizes.append(int(token))
        except ValueError:
            if not sizes:
                raise ValueError(f"--sizes {token!r}: expected input sides like 768 896") from None
            return sizes, list(tokens[index:])
    return sizes, []


def size_sets_from_args(
    sizes: Sequence[int], ensembles: Sequence[str] | None, *, no_ensembles: bool = False
):
    """The size sets to report: the single sizes plus the ``--ensemble`` ones, or None for the
    default ones.

    Raises:
        ValueError: an ensemble is not comma-separated integers among ``sizes``.
    """
    if ensembles is None and not no_ensembles:
        return None
    sets = [(int(s),) for s in sorted(set(sizes))]
    for text in ensembles or ():
        try:
            members = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
        except ValueError:
            raise ValueError(f"--ensemble {text!r}: expected sizes like 768,896") from None
        if not members or set(members) - set(sizes):
            raise ValueError(f"--ensemble {text!r}: use sizes given to --sizes {list(sizes)}")
        if members not in sets:
            sets.append(members)
    return sets


def _percent(value) -> str:
    return _MISSING if value is None else f"{100 * value:.1f}"


def format_table(results: dict) -> str:
    """The Table-4 layout of :func:`evaluate_mask_classification`'s results (Markdown)."""
    header = [
        "Input size",
        "Top-1 (%)",
        "Things (%)",
        "Stuff (%)",
        "Paper top-1 (%)",
        "Time (s / image)",
        "Paper time (s)",
    ]
    rows = []
    for row in results["results"]:
        paper, paper_time = row["paper_top1_accuracy_percent"], row["paper_seconds_per_image"]
        rows.append(
            [
                ", ".join(str(s) for s in row["sizes"]),
                _percent(row["top1_accuracy"]),
                _percent(row["top1_accuracy_things"]),
                _percent(row["top1_accuracy_stuff"]),
                _MISSING if paper is None else f"{paper:.1f}",
                _MISSING if row["seconds_per_image"] is None else f"{row['seconds_per_image']:.3f}",
                _MISSING if paper_time is None else f"{paper_time:.2f}",
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def run(args: argparse.Namespace) -> dict:
    """Loads the dataset and the model, classifies, returns the JSON-ready results."""
    import uniovseg.data.datasets  # noqa: F401  (registers the datasets)
    from uniovseg.engine.trainer import dataset_vocabularies, with_vocabulary
    from uniovseg.evaluation.mask_classification import (
        evaluate_mask_classification,
        panoptic_dataset_records,
    )
    from uniovseg.modeling.build import build_inference_model

    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    if args.ensemble and args.no_ensembles:
        raise ValueError("--ensemble and --no-ensembles exclude each other")
    sizes, opts = split_sizes(args.sizes)
    opts += args.opts
    size_sets = size_sets_from_args(sizes, args.ensemble, no_ensembles=args.no_ensembles)
    # Before the model is built: an unknown or non-panoptic dataset fails at once.
    records = panoptic_dataset_records(args.dataset)
    canvas = [
        "MODEL.UNIOVSEG.TEST.INPUT_SIZE", str(max(sizes)),
        "MODEL.UNIOVSEG.TEST.RESIZE_MODE", "longest_side",
    ]  # fmt: skip
    model, cfg = build_inference_model(args.config_file, opts=[*opts, *canvas], device=args.device)
    if not cfg.MODEL.WEIGHTS and not cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED:
        logger.warning(
            "no CLIP weights (MODEL.WEIGHTS and MODEL.UNIOVSEG.CLIP.PRETRAINED are empty): "
            "classifying with a random CLIP, the accuracies mean nothing"
        )
    from detectron2.data import MetadataCatalog

    metadata = MetadataCatalog.get(args.dataset)
    vocabularies = dataset_vocabularies(cfg)
    if args.dataset in vocabularies:
        metadata = with_vocabulary(metadata, vocabularies[args.dataset])
    results = evaluate_mask_classification(
        model,
        args.dataset,
        sizes=sizes,
        size_sets=size_sets,
        max_images=args.max_images,
        metadata=metadata,
        records=records,
    )
    return {
        "config_file": args.config_file,
        "weights": cfg.MODEL.WEIGHTS,
        "clip_pretrained": cfg.MODEL.UNIOVSEG.CLIP.PRETRAINED,
        "device": str(model.device),
        "sizes": sizes,
        "max_images": args.max_images,
        **results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (2: bad arguments, dataset or weights)."""
    args = build_parser().parse_args(argv)
    from uniovseg.logs import setup_logging

    setup_logging(verbose=args.verbose)
    try:
        results = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{results['dataset']}: {results['num_segments']} ground-truth masks of "
        f"{results['num_images']} images, {results['num_classes']} classes "
        f"(paper column {results['paper_column'] or _MISSING}; {len(results['skipped_images'])} "
        "images skipped)"
    )
    print(format_table(results))
    if args.output:
        from uniovseg.atomic_files import atomic_write

        with atomic_write(args.output, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2, allow_nan=False)
            handle.write("\n")
        print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
