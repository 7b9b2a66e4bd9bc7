"""Trivial baselines of the promptable benchmark, scored by the same mapper and evaluator as the
model (``train_net.py --eval-only`` on a dataset whose evaluator type is ``promptable``).

A learned promptable model must beat masks that need no learning:

* ``whole_image``: every prompt returns the whole image;
* ``discs``: a point returns 4 discs centred on it (radii 1/16, 1/8, 1/4 and 1/2 of the image's
  shorter side; the oracle picks the best, like the model's 4 granularities), a box returns
  itself filled.

Usage:
    python tools/promptable_baselines.py --dataset synthetic_promptable_val \
        --config-file configs/synthetic/stage1.yaml [--output results.json]
"""

from __future__ import annotations

import argparse
import json

import torch
from detectron2.data import DatasetCatalog

import uniovseg.data.datasets  # noqa: F401  (registers the datasets)
from uniovseg.config import load_config
from uniovseg.data.promptable_eval_mapper import PromptableEvalMapper
from uniovseg.evaluation.promptable_evaluator import PromptableEvaluator

DISC_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2)


def whole_image_prediction(example: dict) -> dict:
    """Every prompt -> the whole valid image."""
    height, width = example["image_size"]
    num = len(example["point_coords"])
    full = torch.ones(num, 1, height, width, dtype=torch.bool)
    return {
        "point_masks": full.expand(num, len(DISC_FRACTIONS), height, width),
        "point_iou": torch.ones(num, len(DISC_FRACTIONS)),
        "box_masks": full,
    }


def disc_prediction(example: dict) -> dict:
    """A point -> discs of 4 radii around it; a box -> the filled box."""
    height, width = example["image_size"]
    ys = torch.arange(height, dtype=torch.float32).view(1, height, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, width) + 0.5
    points = example["point_coords"].float()
    distance = torch.sqrt(
        (xs - points[:, 0].view(-1, 1, 1)) ** 2 + (ys - points[:, 1].view(-1, 1, 1)) ** 2
    )
    radii = torch.tensor(DISC_FRACTIONS) * min(height, width)
    point_masks = distance[:, None] <= radii.view(1, -1, 1, 1)
    boxes = example["box_prompts"].float()
    box_masks = (
        (xs >= boxes[:, 0].view(-1, 1, 1))
        & (xs <= boxes[:, 2].view(-1, 1, 1))
        & (ys >= boxes[:, 1].view(-1, 1, 1))
        & (ys <= boxes[:, 3].view(-1, 1, 1))
    )[:, None]
    return {
        "point_masks": point_masks,
        "point_iou": torch.ones(len(points), len(DISC_FRACTIONS)),
        "box_masks": box_masks,
    }


BASELINES = {"whole_image": whole_image_prediction, "discs": disc_prediction}


def evaluate_baselines(cfg, dataset_name: str) -> dict[str, dict]:
    """Scores every baseline on ``dataset_name``; returns {baseline: evaluator results}."""
    mapper = PromptableEvalMapper(cfg)
    examples = [mapper(d) for d in DatasetCatalog.get(dataset_name)]
    results = {}
    for name, predict in BASELINES.items():
        evaluator = PromptableEvaluator(dataset_name, distributed=False)
        evaluator.reset()
        for example in examples:
            evaluator.process([example], [{"prompt_eval": predict(example)}])
        results[name] = evaluator.evaluate()["promptable"]
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a dataset with evaluator 'promptable'")
    parser.add_argument("--config-file", required=True, help="gives the test input geometry")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
    except (OSError, KeyError, ValueError) as e:
        parser.error(str(e))
    results = evaluate_baselines(cfg, args.dataset)
    for name, metrics in results.items():
        print(
            f"{name:12s} 1-pt oracle IoU {metrics['1pt_oracle_iou']:.2f}  "
            f"1-box IoU {metrics['1box_iou']:.2f}  ({metrics['num_instances']} instances)"
        )
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
