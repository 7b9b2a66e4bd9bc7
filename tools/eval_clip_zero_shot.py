#!/usr/bin/env python
"""Zero-shot accuracy of a CLIP on the synthetic world's labelled segments, two ways.

(a) crop: every ground-truth segment's box (enlarged, squared) is cropped, resized to the
    model's input size and classified by its global image embedding;
(b) mask pooling: the whole image goes through the backbone once; every segment's mask pools the
    dense CLIP map (``CLIPConvNeXtBackbone.embed_regions``) and the region embedding is
    classified (the paper's "baseline": CLIP classification of class-agnostic masks).

Both use the class names of ``<root>/eval/categories.json`` with prompt templates, averaged per
class. Output: one JSON object (accuracies overall / things / stuff, chance, majority baseline)::

    python tools/eval_clip_zero_shot.py --root datasets/synthetic \
        --pretrained output/synthetic_clip.pt --model-name uniovseg_synthetic_clip
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "there is a {} in the scene.",
    "a picture of a {}.",
)


def load_segments(root: str, max_images: int | None) -> list[dict]:
    """Per image: ``image`` uint8 (H, W, 3), ``masks`` bool (N, H, W), ``labels`` (N,) contiguous
    class ids, ``isthing`` (N,) bool, ``boxes`` (N, 4) XYWH."""
    from uniovseg.data.datasets.synthetic import load_synthetic_panoptic

    dicts = load_synthetic_panoptic(root)[:max_images]
    out = []
    for d in dicts:
        image = np.array(Image.open(d["file_name"]).convert("RGB"))
        pan = np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB")).astype(np.int64)
        ids = pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2]
        segs = d["segments_info"]
        if not segs:
            continue
        out.append(
            {
                "image": image,
                "masks": np.stack([ids == s["id"] for s in segs]),
                "labels": np.array([s["category_id"] for s in segs]),
                "isthing": np.array([s["isthing"] for s in segs]),
                "boxes": np.array([s["bbox"] for s in segs], dtype=np.float64),
            }
        )
    return out


def crop_square(image: np.ndarray, box_xywh, enlarge: float, size: int) -> np.ndarray:
    """A square crop around a box (side = ``enlarge`` x the longer box side, clipped to the
    image), resized to ``size``: uint8 (size, size, 3)."""
    h, w = image.shape[:2]
    x, y, bw, bh = box_xywh
    side = int(min(max(bw, bh) * enlarge, h, w))
    side = max(side, 4)
    cx, cy = x + bw / 2, y + bh / 2
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    crop = Image.fromarray(image[y0 : y0 + side, x0 : x0 + side])
    return np.asarray(crop.resize((size, size), Image.BICUBIC))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="synthetic world root")
    parser.add_argument("--pretrained", required=True, help="CLIP weights file (or open_clip tag)")
    parser.add_argument("--model-name", default="uniovseg_synthetic_clip")
    parser.add_argument("--crop-size", type=int, default=None, help="default: model config's")
    parser.add_argument("--crop-enlarge", type=float, default=1.3)
    parser.add_argument(
        "--dense-size",
        type=int,
        default=None,
        help="resize whole images to this square side (a multiple of 32) for (b); default: as is",
    )
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--templates", nargs="+", default=list(DEFAULT_TEMPLATES))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    from uniovseg.logs import setup_logging

    setup_logging()
    torch.set_num_threads(args.threads)

    import open_clip

    from uniovseg.config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
    from uniovseg.data.datasets.synthetic import read_categories
    from uniovseg.model_zoo import register_open_clip_configs
    from uniovseg.modeling.clip_backbone import DENSE_FEATURE_NAME, CLIPConvNeXtBackbone

    start = time.perf_counter()
    register_open_clip_configs()
    backbone = CLIPConvNeXtBackbone(model_name=args.model_name, pretrained=args.pretrained)
    crop_size = args.crop_size or int(
        open_clip.get_model_config(args.model_name)["vision_cfg"]["image_size"]
    )
    mean = torch.tensor(CLIP_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_PIXEL_STD).view(1, 3, 1, 1)

    def normalize(batch_hwc: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch_hwc)).permute(0, 3, 1, 2).float()
        return (x - mean) / std

    names = [c["name"] for c in read_categories(args.root)]
    prompts = [t.format(n) for n in names for t in args.templates]
    text = backbone.encode_text(prompts).view(len(names), len(args.templates), -1)
    classifier = F.normalize(F.normalize(text, dim=-1).mean(1), dim=-1)  # [K, D]

    images = load_segments(args.root, args.max_images)
    labels, isthing, pred_crop, pred_pool = [], [], [], []
    with torch.no_grad():
        for item in images:
            crops = np.stack(
                [crop_square(item["image"], b, args.crop_enlarge, crop_size) for b in item["boxes"]]
            )
            crop_embeds = backbone.clip_model.encode_image(normalize(crops), normalize=True)
            pred_crop.append((crop_embeds @ classifier.t()).argmax(-1).numpy())
            image = item["image"]
            if args.dense_size:
                size = (args.dense_size, args.dense_size)
                image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
            # Masks stay at full resolution: embed_regions resizes them to the feature grid.
            dense = backbone(normalize(image[None]))[DENSE_FEATURE_NAME]
            masks = torch.from_numpy(item["masks"]).float()[None]
            region = F.normalize(backbone.embed_regions(dense, masks)[0], dim=-1)
            pred_pool.append((region @ classifier.t()).argmax(-1).numpy())
            labels.append(item["labels"])
            isthing.append(item["isthing"])
    labels, isthing = np.concatenate(labels), np.concatenate(isthing).astype(bool)
    pred_crop, pred_pool = np.concatenate(pred_crop), np.concatenate(pred_pool)

    def acc(pred: np.ndarray, sel: np.ndarray) -> float:
        return round(float((pred[sel] == labels[sel]).mean()), 4) if sel.any() else float("nan")

    everything = np.ones_like(isthing)
    result = {
        "model_name": args.model_name,
        "pretrained": args.pretrained,
        "num_images": len(images),
        "num_segments": int(len(labels)),
        "num_classes": len(names),
        "dense_size": args.dense_size or "native",
        "chance": round(1.0 / len(names), 4),
        "majority_baseline": round(float(np.bincount(labels).max() / len(labels)), 4),
        "crop_accuracy": acc(pred_crop, everything),
        "crop_accuracy_things": acc(pred_crop, isthing),
        "crop_accuracy_stuff": acc(pred_crop, ~isthing),
        "mask_pool_accuracy": acc(pred_pool, everything),
        "mask_pool_accuracy_things": acc(pred_pool, isthing),
        "mask_pool_accuracy_stuff": acc(pred_pool, ~isthing),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
