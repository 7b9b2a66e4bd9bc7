"""Test-time mapper for promptable (1-point / 1-box) evaluation on datasets with instance masks.

Each ground-truth mask becomes one box prompt (its tight box: the ground-truth box) and, with the
point protocol ``"centre"``, one point prompt (the mask "centre": the maximum of its distance
transform, always inside the mask). With ``"grid"``, the paper's protocol (App. B; Fig. 3 and 8:
"a 20x20 point grid as visual prompt"), the point prompts are instead a uniform grid over the
image, the same grid as automatic mask generation (cell centres of the valid region), and the
evaluator scores each ground-truth mask by the best of all the grid's masks. The image is passed
on at its original size: the model resizes and pads it with the preprocessing of every other
test image (:meth:`UniOVSeg.preprocess_image`). The ground-truth masks and prompts live in the
resized, unpadded ("valid") frame of that preprocessing, the frame of the model's promptable-eval
outputs; the mapper resizes them there with the same geometry
(:func:`~uniovseg.modeling.image_frame.inference_frame`).

Two dataset-dict flavours are read:
    * detectron2 instance dicts (COCO, LVIS, ...): ``annotations`` with ``segmentation`` as
      polygons, an uncompressed/compressed COCO RLE dict, or a bool [H, W] array;
    * detectron2 panoptic dicts: ``pan_seg_file_name`` (COCO panoptic PNG) + ``segments_info``.
Crowd regions (``iscrowd`` = 1) are skipped unless ``include_crowd``.
"""

from __future__ import annotations

import copy
import logging

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils
from detectron2.data import transforms as T
from pycocotools import mask as mask_util

from uniovseg.modeling.image_frame import TEST_RESIZE_MODES, ImageFrame, inference_frame
from uniovseg.modeling.point_grid import inference_point_grid

__all__ = ["POINT_PROTOCOLS", "PromptableEvalMapper", "mask_centre_points"]

logger = logging.getLogger(__name__)

# Point prompts of promptable evaluation: one per ground-truth mask at its centre (SAM's 1-point
# protocol), or a uniform grid over the image (the paper's, App. B).
POINT_PROTOCOLS = ("centre", "grid")


def mask_centre_points(masks: np.ndarray) -> np.ndarray:
    """The point of each mask farthest from its border (maximum of the distance transform).

    The mask is padded by one background pixel on every side first, so the image border counts
    as mask border (a mask touching the image edge gets its point inside, not on the edge).

    Args:
        masks: bool array [G, h, w]; every mask non-empty.

    Returns:
        float32 array [G, 2] of (x, y) at the centre of the chosen pixel (``col + 0.5``,
        ``row + 0.5``, continuous pixel coordinates); ``masks[g, int(y), int(x)]`` is True.
        Ties go to the first pixel in row-major order.
    """
    points = np.zeros((masks.shape[0], 2), dtype=np.float32)
    for g, mask in enumerate(masks):
        padded = np.pad(mask.astype(np.uint8), 1)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
        if not mask[row, col]:
            raise ValueError(f"mask {g} is empty; remove empty masks before choosing points")
        points[g] = (col + 0.5, row + 0.5)
    return points


def _mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight XYXY boxes (pixel edges: x2 = last column + 1) of non-empty bool masks [G, h, w]."""
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    y0 = rows.argmax(axis=1)
    y1 = rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32).reshape(-1, 4)


def _decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """One annotation's ``segmentation`` (polygons, RLE dict or bool array) -> bool [H, W]."""
    if isinstance(segmentation, np.ndarray):
        if segmentation.shape != (height, width):
            raise ValueError(
                f"bitmask segmentation has shape {segmentation.shape}, image is {(height, width)}"
            )
        return segmentation.astype(bool)
    if isinstance(segmentation, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = mask_util.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        if [int(s) for s in rle["size"]] != [height, width]:
            raise ValueError(f"RLE size {rle['size']} does not match the image {(height, width)}")
    else:
        raise ValueError(
            f"unsupported segmentation type {type(segmentation).__name__}: expected polygons "
            "(list), a COCO RLE dict or a bool [H, W] array"
        )
    return mask_util.decode(rle).astype(bool)


class PromptableEvalMapper:
    """Maps a dataset dict with instance masks to the promptable-evaluation input of the model.

    The output dict has:
        * ``image``: uint8 tensor [3, H, W] (channels in ``image_format`` order), the image at its
          original size (the model resizes and pads it);
        * ``image_size``: ``(h, w)`` of the valid (resized, unpadded) region of the model's input;
        * ``height``, ``width``: original image size;
        * ``gt_masks``: bool tensor [G, h, w], non-empty ground-truth masks in the valid frame;
        * ``point_coords``: float32 tensor [P, 2] of (x, y) in input pixels: with
          ``point_prompts="centre"`` P = G, each mask's distance-transform centre (inside the
          mask); with ``"grid"`` P = ``grid_size**2``, the cell centres of a uniform grid over the
          valid region (row-major), whatever the masks;
        * ``point_protocol``: ``point_prompts`` (how the evaluator scores the point masks), and
          with ``"grid"``, ``point_grid_size``: ``grid_size``;
        * ``box_prompts``: float32 tensor [G, 4], tight XYXY box of each mask (pixel edges);
        * ``file_name``, ``image_id`` copied from the dataset dict when present.
    G may be 0 (no usable mask); the evaluator then has nothing to score for the image.
    """

    @configurable
    def __init__(
        self,
        *,
        input_size: int,
        resize_mode: str = "longest_side",
        min_size_test: int = 800,
        max_size_test: int = 1333,
        image_format: str = "RGB",
        include_crowd: bool = False,
        point_prompts: str = "centre",
        grid_size: int = 20,
    ) -> None:
        """
        Args:
            input_size: Side S of the square padded input.
            resize_mode: ``"longest_side"`` (longest side -> S, the release's geometry) or
                ``"shortest_edge"`` (detectron2's ResizeShortestEdge with the two sizes below;
                ``max_size_test`` must be <= S so that nothing is cropped).
            min_size_test: Shortest-edge target for ``"shortest_edge"``.
            max_size_test: Longest-edge cap for ``"shortest_edge"``.
            image_format: detectron2 image format the model expects (``"RGB"`` for CLIP).
            include_crowd: Also evaluate ``iscrowd`` regions.
            point_prompts: ``"centre"`` (one point per mask) or ``"grid"`` (a uniform grid; the
                paper's protocol), see :data:`POINT_PROTOCOLS`.
            grid_size: Points per side of the grid (paper: 20).
        """
        if resize_mode not in TEST_RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {TEST_RESIZE_MODES}, got {resize_mode!r}")
        if resize_mode == "shortest_edge" and max_size_test > input_size:
            raise ValueError(
                f"max_size_test={max_size_test} exceeds input_size={input_size}: resized images "
                "could not be padded to the input without cropping; lower INPUT.MAX_SIZE_TEST or "
                "raise MODEL.UNIOVSEG.TEST.INPUT_SIZE"
            )
        if point_prompts not in POINT_PROTOCOLS:
            raise ValueError(
                f"point_prompts (MODEL.UNIOVSEG.TEST.PROMPTABLE_POINTS) must be one of "
                f"{POINT_PROTOCOLS}, got {point_prompts!r}"
            )
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
            raise ValueError(
                f"grid_size (MODEL.UNIOVSEG.TEST.PROMPTABLE_GRID_SIZE) must be an int >= 1, got "
                f"{grid_size!r}"
            )
        self.input_size = int(input_size)
        self.resize_mode = resize_mode
        self.min_size_test = int(min_size_test)
        self.max_size_test = int(max_size_test)
        self.image_format = image_format
        self.include_crowd = bool(include_crowd)
        self.point_prompts = point_prompts
        self.grid_size = grid_size

    @classmethod
    def from_config(cls, cfg) -> dict:
        min_size = cfg.INPUT.MIN_SIZE_TEST
        return {
            "input_size": cfg.MODEL.UNIOVSEG.TEST.INPUT_SIZE,
            "resize_mode": cfg.MODEL.UNIOVSEG.TEST.RESIZE_MODE,
            "min_size_test": min_size if isinstance(min_size, int) else min_size[0],
            "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
            "image_format": cfg.INPUT.FORMAT,
            "point_prompts": cfg.MODEL.UNIOVSEG.TEST.PROMPTABLE_POINTS,
            "grid_size": cfg.MODEL.UNIOVSEG.TEST.PROMPTABLE_GRID_SIZE,
        }

    def frame(self, height: int, width: int) -> ImageFrame:
        """The frames of an ``(height, width)`` image under the model's test resize
        (:func:`~uniovseg.modeling.image_frame.inference_frame`)."""
        return inference_frame(
            (height, width),
            self.input_size,
            resize_mode=self.resize_mode,
            min_size=self.min_size_test,
            max_size=self.max_size_test,
        )

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = detection_utils.read_image(dataset_dict["file_name"], format=self.image_format)
        detection_utils.check_image_size(dataset_dict, image)
        height, width = image.shape[:2]
        frame = self.frame(height, width)
        new_h, new_w = frame.valid_size
        # Nearest-neighbour, as detectron2 resizes segmentations alongside a resized image.
        resize = T.ResizeTransform(height, width, new_h, new_w)

        masks = self._read_masks(dataset_dict, height, width)
        resized = np.zeros((len(masks), new_h, new_w), dtype=bool)
        for g, mask in enumerate(masks):
            resized[g] = resize.apply_segmentation(mask.astype(np.uint8)) > 0
        nonempty = resized.reshape(len(resized), new_h * new_w).any(axis=1)  # G may be 0
        if not nonempty.all():
            logger.debug(
                "%s: %d masks vanished after resizing", dataset_dict["file_name"], (~nonempty).sum()
            )
        resized = resized[nonempty]

        out = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "image_size": (new_h, new_w),
            "height": height,
            "width": width,
            "gt_masks": torch.from_numpy(resized),
            "point_coords": self._point_prompts(resized, frame),
            "point_protocol": self.point_prompts,
            "box_prompts": torch.from_numpy(_mask_boxes(resized)),
        }
        if self.point_prompts == "grid":
            out["point_grid_size"] = self.grid_size
        for key in ("file_name", "image_id"):
            if key in dataset_dict:
                out[key] = dataset_dict[key]
        return out

    def _point_prompts(self, masks: np.ndarray, frame: ImageFrame) -> torch.Tensor:
        if self.point_prompts == "grid":
            # The automatic mask generator's grid: the same points as whole-image inference.
            return inference_point_grid(self.grid_size, frame)
        return torch.from_numpy(mask_centre_points(masks))

    def _read_masks(self, dataset_dict: dict, height: int, width: int) -> list[np.ndarray]:
        if "annotations" in dataset_dict:
            return [
                _decode_segmentation(a["segmentation"], height, width)
                for a in dataset_dict["annotations"]
                if "segmentation" in a and (self.include_crowd or not a.get("iscrowd", 0))
            ]
        if "pan_seg_file_name" in dataset_dict:
            from panopticapi.utils import rgb2id

            pan = detection_utils.read_image(dataset_dict["pan_seg_file_name"], format="RGB")
            ids = rgb2id(pan)
            if ids.shape != (height, width):
                raise ValueError(
                    f"panoptic PNG {dataset_dict['pan_seg_file_name']} is {ids.shape}, the image "
                    f"is {(height, width)}"
                )
            return [
                ids == s["id"]
                for s in dataset_dict.get("segments_info", [])
                if self.include_crowd or not s.get("iscrowd", 0)
            ]
        raise ValueError(
            f"{dataset_dict.get('file_name')}: the dataset dict has neither 'annotations' "
            "(instance masks) nor 'pan_seg_file_name' (panoptic PNG), so it cannot be used for "
            "promptable evaluation"
        )
