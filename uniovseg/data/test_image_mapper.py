"""Test-time mapper for open-vocabulary evaluation: the image at its original size, nothing else.

The model resizes (longest side to ``MODEL.UNIOVSEG.TEST.INPUT_SIZE``) and pads by itself, so a
second resize here would only blur the input; the evaluators read the ground truth files
themselves, so reading them here (as detectron2's ``DatasetMapper`` does, in 8-bit mode, which
clips 16-bit ADE-847 / PC-459 labels) would be wasted work.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from detectron2.data import detection_utils


class TestImageMapper:
    """``{"file_name", ...}`` -> the same dict plus ``image`` uint8 [3, H, W] RGB, ``height``,
    ``width`` (the original size, which the outputs are produced at)."""

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = detection_utils.read_image(dataset_dict["file_name"], format="RGB")
        dataset_dict["height"], dataset_dict["width"] = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        for key in ("sem_seg_file_name", "pan_seg_file_name", "annotations", "segments_info"):
            dataset_dict.pop(key, None)
        return dataset_dict
