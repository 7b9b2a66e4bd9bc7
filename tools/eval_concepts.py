#!/usr/bin/env python
"""Evaluate concept prompts (``UniOVSegPredictor.segment_concepts``) on a labelled panoptic
dataset: every class name asked as a concept on every image; per-concept AP50, precision and
recall at the score threshold, and the image-level "none found" answers.

The metrics are defined in :mod:`uniovseg.evaluation.concept_metrics`. One image encoding and
one set of automatic masks serve all the concepts of an image. ``--calibrate`` picks the score
threshold with the best pooled F1 on this data (use data kept apart from what you report on)
and writes it to ``calibration.json``; otherwise the config's ``MODEL.UNIOVSEG.CONCEPTS.
SCORE_THRESH`` (or ``--score-thresh``) is used. ``--combine`` tabulates earlier runs (e.g. one
per world seed): each run's means, their mean and the worst.

Usage:
    # calibrate on one world seed's labelled images and model (kept apart)
    python tools/eval_concepts.py --world S6/world --output concepts/s6 --calibrate \\
        --config-file configs/synthetic/stage2.yaml MODEL.WEIGHTS S6/stage2/model_final.pth \\
        MODEL.UNIOVSEG.CLIP.PRETRAINED S6/clip/synthetic_clip.pt
    # report on other seeds with the calibrated threshold (in the config or --score-thresh)
    python tools/eval_concepts.py --world S3/world --output concepts/s3 ... (as above)
    python tools/eval_concepts.py --combine concepts/s3 concepts/s4 concepts/s5 --output concepts

Writes ``concepts.json`` (every number, per concept) and ``concepts.md`` (the table) in
``--output``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time

import numpy as np

# Python puts this file's folder first on sys.path; the repository root makes uniovseg
# importable without installing it.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

logger = logging.getLogger("uniovseg.tools.eval_concepts")

# Thresholds tried by --calibrate.
CALIBRATION_THRESHOLDS = [round(t, 2) for t in np.arange(0.05, 0.96, 0.01)]
_HEADLINE = ("ap50", "precision", "recall", "none_found_accuracy", "found_rate")
_HEADLINE_NAMES = ("AP50", "precision", "recall", "none-found acc.", "found rate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", help="a uniovseg YAML config (a path or packaged name)")
    parser.add_argument(
        "--dataset",
        default="synthetic_panoptic_val",
        help="a registered dataset with COCO panoptic ground truth (default: the synthetic "
        "world's labelled set)",
    )
    parser.add_argument(
        "--world", help="root of a synthetic world to register (datasets/prepare_synthetic.py)"
    )
    parser.add_argument("--output", required=True, help="output folder (created)")
    parser.add_argument("--max-images", type=int, default=None, help="only the first N images")
    parser.add_argument(
        "--calibrate", action="store_true", help="choose the threshold on this data"
    )
    parser.add_argument("--score-thresh", type=float, default=None, help="replaces the config's")
    parser.add_argument(
        "--background", default=None, help="replaces CONCEPTS.BACKGROUND_VOCABULARY"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: config)")
    parser.add_argument("--combine", nargs="+", metavar="RUN", help="tabulate earlier runs")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def panoptic_segments(record: dict) -> tuple[np.ndarray, list[dict]]:
    """The ground truth of one image: segment ids [H, W] and its segments_info."""
    from PIL import Image

    rgb = np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB"), dtype=np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    return ids, record["segments_info"]


def evaluate(args, parser) -> dict:
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from uniovseg.data.datasets.synthetic import register_synthetic_world
    from uniovseg.evaluation.concept_metrics import ConceptEvaluation
    from uniovseg.inference import UniOVSegPredictor
    from uniovseg.inference.image_io import read_image

    if args.world:
        register_synthetic_world(args.world)
    if args.dataset not in DatasetCatalog.list():
        parser.error(f"--dataset {args.dataset!r} is not registered")
    metadata = MetadataCatalog.get(args.dataset)
    classes = list(metadata.get("vocabulary", None) or metadata.stuff_classes)
    things = set(metadata.thing_dataset_id_to_contiguous_id.values())
    isthing = [c in things for c in range(len(classes))]
    records = DatasetCatalog.get(args.dataset)[: args.max_images]

    predictor = UniOVSegPredictor.from_config(args.config_file, opts=args.opts, device=args.device)
    segmenter = predictor.model.open_vocab.concepts
    evaluation = ConceptEvaluation(classes, isthing)
    seconds = {"set_image": 0.0, "first_query": 0.0, "repeat_query": 0.0}
    with torch.no_grad():
        for n, record in enumerate(records):
            image = read_image(record["file_name"]).image
            start = time.perf_counter()
            predictor.set_image(image)
            encoded = time.perf_counter()
            # Threshold 0: the whole ranking (AP), every threshold reads a prefix of it.
            out = predictor.segment_concepts(
                classes, background=args.background, score_threshold=0.0
            )
            seconds["set_image"] += encoded - start
            seconds["first_query"] += time.perf_counter() - encoded
            if n < 5:  # the cached path: automatic masks and region embeddings reused
                start = time.perf_counter()
                predictor.segment_concepts(classes[:1], background=args.background)
                seconds["repeat_query"] += time.perf_counter() - start
            ids, segments = panoptic_segments(record)
            if ids.shape != tuple(out.image_size):
                raise ValueError(f"{record['file_name']}: ground truth {ids.shape} vs image")
            for c, concept in enumerate(out):
                gt = [ids == s["id"] for s in segments if s["category_id"] == c]
                gt = np.stack(gt) if gt else np.zeros((0, *ids.shape), dtype=bool)
                masks = [i.mask for i in concept.instances]
                masks = np.stack(masks) if masks else np.zeros((0, *ids.shape), dtype=bool)
                evaluation.add(c, gt, masks, concept.scores)
            evaluation.next_image()
            if (n + 1) % 20 == 0:
                logger.info("%d / %d images", n + 1, len(records))
    predictor.reset_image()

    results = {"dataset": args.dataset, "world": args.world, "config": args.config_file,
               "opts": args.opts, "background": out.background}  # fmt: skip
    if args.calibrate:
        threshold, curve = evaluation.calibrate(CALIBRATION_THRESHOLDS)
        results["calibration"] = {"criterion": "pooled F1 at mask IoU 0.5", "curve": curve,
                                  "score_threshold": threshold}  # fmt: skip
    elif args.score_thresh is not None:
        threshold = args.score_thresh
    else:
        threshold = segmenter.score_threshold
    results.update(evaluation.summarize(threshold))
    # The pooled numbers and image-level answers at every threshold (e.g. to compare the
    # calibrated threshold with no rejection, 0, or the 0.5 prior on data it was not chosen on).
    results["threshold_sweep"] = []
    for t in [0.0, *CALIBRATION_THRESHOLDS]:
        mean = evaluation.summarize(t)["mean"]
        answers = {k: mean[k] for k in ("none_found_accuracy", "found_rate", "image_accuracy")}
        results["threshold_sweep"].append({"score_threshold": t, **evaluation.pooled(t), **answers})
    count = max(1, len(records))
    results["seconds_per_image"] = {
        "set_image": seconds["set_image"] / count,
        "first_query_all_concepts": seconds["first_query"] / count,
        "repeat_query_one_concept": seconds["repeat_query"] / max(1, min(5, len(records))),
    }
    return results


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def concept_table(results: dict) -> str:
    lines = [
        f"Concept prompts on {results['dataset']} ({results['num_images']} images), score "
        f"threshold {results['score_threshold']:.2f}",
        "",
        "| concept | kind | GT | " + " | ".join(_HEADLINE_NAMES) + " |",
        "|---|---|---|" + "---|" * len(_HEADLINE),
    ]
    for row in results["concepts"]:
        kind = "thing" if row["isthing"] else "stuff"
        values = " | ".join(_pct(row[k]) for k in _HEADLINE)
        lines.append(f"| {row['concept']} | {kind} | {row['num_gt']} | {values} |")
    for name in ("things", "stuff", "mean"):
        values = " | ".join(_pct(results[name][k]) for k in _HEADLINE)
        lines.append(f"| **{name}** | | | {values} |")
    return "\n".join(lines) + "\n"


def combine(runs: list[str]) -> tuple[dict, str]:
    """Each run's means, their mean and the worst (the lowest value of each column)."""
    rows = []
    for run in runs:
        with open(os.path.join(run, "concepts.json"), encoding="utf-8") as f:
            results = json.load(f)
        sweep = {round(r["score_threshold"], 2): r for r in results.get("threshold_sweep", [])}
        best = max(sweep.values(), key=lambda r: r["f1"]) if sweep else {}
        rows.append(
            {
                "run": run,
                "num_images": results["num_images"],
                "score_threshold": results["score_threshold"],
                **{k: results["mean"][k] for k in _HEADLINE},
                "ap50_things": results["things"]["ap50"],
                "ap50_stuff": results["stuff"]["ap50"],
                "f1": results["pooled"]["f1"],
                # The same F1 without rejection (0), at the 0.5 prior, and at this run's own
                # best threshold (an oracle: chosen on the data it is measured on).
                "f1_at_0": sweep.get(0.0, {}).get("f1", float("nan")),
                "f1_at_0.5": sweep.get(0.5, {}).get("f1", float("nan")),
                "f1_oracle": best.get("f1", float("nan")),
                "oracle_threshold": best.get("score_threshold", float("nan")),
            }
        )
    keys = [*_HEADLINE, "ap50_things", "ap50_stuff", "f1", "f1_at_0", "f1_at_0.5", "f1_oracle"]
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    worst = {k: float(np.nanmin([r[k] for r in rows])) for k in keys}
    names = [*_HEADLINE_NAMES, "AP50 things", "AP50 stuff", "F1", "F1 at 0", "F1 at 0.5",
             "F1 oracle"]  # fmt: skip
    lines = ["| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['run']} | " + " | ".join(_pct(r[k]) for k in keys) + " |")
    lines.append("| **mean** | " + " | ".join(_pct(mean[k]) for k in keys) + " |")
    lines.append("| **worst** | " + " | ".join(_pct(worst[k]) for k in keys) + " |")
    return {"runs": rows, "mean": mean, "worst": worst}, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    if args.combine:
        results, table = combine(args.combine)
    else:
        if not args.config_file:
            parser.error("--config-file is needed (except with --combine)")
        if len(args.opts) % 2:
            parser.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
        results = evaluate(args, parser)
        table = concept_table(results)
    with open(os.path.join(args.output, "concepts.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.output, "concepts.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
