"""Annotation records of a scene in the real formats: SA-1B per-image JSON and COCO panoptic.

- SA-1B: every visible part, whole object and background region becomes one class-agnostic mask
  (COCO RLE with ``counts`` as str, ``bbox`` XYWH, ``area``, ``predicted_iou``, ``point_coords``
  ``[[x, y]]``, ``stability_score``, ``crop_box``), nested like SA-1B's multi-granular masks.
- Evaluation: a semantic map (uint8, class index, 255 = ignore), a COCO panoptic PNG (segment
  ids rgb-encoded as ``R + 256 G + 256^2 B``, 0 = void) with its ``segments_info``, and COCO
  instance annotations (RLE) of every segment, from which point and box prompts are derived.

Class indices are contiguous in :attr:`World.class_names` order (things first, then stuff); the
COCO category id of class ``i`` is ``i + 1``.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from .scene import Scene
from .world import World

__all__ = [
    "EvalRecord",
    "coco_categories",
    "encode_rle",
    "eval_record",
    "id_to_rgb",
    "sa1b_annotations",
]


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a bool (H, W) mask: ``{"size": [H, W], "counts": str}``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def _bbox_xywh(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic colour encoding of int segment ids (H, W) -> uint8 (H, W, 3)."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def coco_categories(world: World) -> list[dict]:
    """COCO panoptic categories: ``id`` (1-based), ``name``, ``isthing``, ``color``,
    ``supercategory``; things first, in :attr:`World.class_names` order."""
    names = world.class_names
    cats = []
    for i, name in enumerate(names):
        # Evenly spaced hues, only for visualisation.
        r, g, b = colorsys.hsv_to_rgb((i * 0.61803) % 1.0, 0.65, 0.9)
        isthing = int(i < len(world.things))
        cats.append(
            {
                "id": i + 1,
                "name": name,
                "isthing": isthing,
                "color": [int(r * 255), int(g * 255), int(b * 255)],
                "supercategory": "thing" if isthing else "stuff",
            }
        )
    return cats


def sa1b_annotations(
    scene: Scene,
    rng: np.random.Generator,
    *,
    image_id: int,
    min_area: float,
    predicted_iou: tuple[float, float],
    stability_score: tuple[float, float],
) -> list[dict]:
    """Class-agnostic SA-1B annotations of a scene: parts, whole things, background regions.

    Args:
        scene: The scene.
        rng: Random generator (scores and the point inside each mask).
        image_id: The image's id; annotation ids are ``image_id * 1000 + k``.
        min_area: Masks covering less than this fraction of the image are left out.
        predicted_iou: Range of the (synthetic) ``predicted_iou`` field.
        stability_score: Range of the (synthetic) ``stability_score`` field.

    Returns:
        SA-1B annotation dicts; ``point_coords`` is ``[[x, y]]``, a pixel of the mask.
    """
    h, w = scene.size
    min_px = max(1, int(round(min_area * h * w)))
    masks: list[np.ndarray] = []
    for t in scene.things:
        whole_area = int(t.mask.sum())
        if whole_area >= min_px:
            masks.append(t.mask)
        for p in t.parts:
            area = int(p.mask.sum())
            # A part that is all that is left of its object would duplicate the whole mask.
            if area >= min_px and area != whole_area:
                masks.append(p.mask)
    masks.extend(s.mask for s in scene.stuff if s.mask.sum() >= min_px)
    anns = []
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        j = int(rng.integers(len(xs)))
        anns.append(
            {
                "id": image_id * 1000 + k,
                "segmentation": encode_rle(m),
                "bbox": _bbox_xywh(m),
                "area": int(len(xs)),
                "predicted_iou": round(float(rng.uniform(*predicted_iou)), 6),
                "point_coords": [[float(xs[j]), float(ys[j])]],
                "stability_score": round(float(rng.uniform(*stability_score)), 6),
                "crop_box": [0.0, 0.0, float(w), float(h)],
            }
        )
    return anns


@dataclass
class EvalRecord:
    """Labels of one evaluation image.

    Attributes:
        sem_seg: uint8 (H, W) class indices, 255 = ignore.
        panoptic_rgb: uint8 (H, W, 3) rgb-encoded segment ids, 0 = void.
        segments_info: COCO panoptic segments (``id``, ``category_id`` (1-based dataset id),
            ``iscrowd``, ``bbox`` XYWH, ``area``).
        instances: COCO instance annotations of the same segments (RLE ``segmentation``).
    """

    sem_seg: np.ndarray
    panoptic_rgb: np.ndarray
    segments_info: list[dict]
    instances: list[dict]


def eval_record(scene: Scene, world: World, *, image_id: int, min_area: float) -> EvalRecord:
    """Semantic, panoptic and instance labels of a scene.

    Every thing is one instance segment; all regions of one stuff kind form one segment (COCO
    panoptic convention). Things under ``min_area`` (fraction of the image) are void: 255 in the
    semantic map, id 0 in the panoptic PNG, no instance.
    """
    h, w = scene.size
    num_things = len(world.things)
    min_px = max(1, int(round(min_area * h * w)))
    sem = np.full((h, w), 255, dtype=np.uint8)
    pan = np.zeros((h, w), dtype=np.int32)
    segments: list[tuple[int, np.ndarray]] = []  # (class index, mask)
    for t in scene.things:
        if t.mask.sum() >= min_px:
            segments.append((t.kind, t.mask))
    merged: dict[int, np.ndarray] = {}
    for s in scene.stuff:
        merged[s.kind] = merged[s.kind] | s.mask if s.kind in merged else s.mask.copy()
    segments.extend((num_things + k, merged[k]) for k in sorted(merged))
    infos, instances = [], []
    for seg_id, (cls, m) in enumerate(segments, start=1):
        sem[m] = cls
        pan[m] = seg_id
        bbox, area = _bbox_xywh(m), int(m.sum())
        infos.append(
            {"id": seg_id, "category_id": cls + 1, "iscrowd": 0, "bbox": bbox, "area": area}
        )
        instances.append(
            {
                "id": image_id * 1000 + seg_id,
                "image_id": image_id,
                "category_id": cls + 1,
                "segmentation": encode_rle(m),
                "area": area,
                "bbox": bbox,
                "iscrowd": 0,
            }
        )
    return EvalRecord(sem, id_to_rgb(pan), infos, instances)
