"""Predictions made on a downscaled image, brought back to the original image's pixels.

Large photos are read downscaled (``image_io.read_image(max_side=...)``) to bound the memory
of full-size masks, but files written for them must speak in the pixels of the file the user
gave. The frames, named as in :class:`~uniovseg.inference.image_io.LoadedImage` and
:class:`~uniovseg.inference.predictor.UniOVSegPredictor`:

* original: the upright image file, ``(H0, W0)`` (``LoadedImage.original_size``);
* processed: the image given to the predictor, ``(H, W)`` (``LoadedImage.size``, which the
  predictor calls its ``original_size``);
* valid and padded: the network's resized region (``predictor.input_size``) inside its padded
  square (``predictor.padded_size``), where the low-resolution mask logits live.

Masks are re-rendered from the network's low-resolution logits straight at the original size
(bilinear in logit space, threshold 0: what the predictor gives when the original image is set),
not enlarged from the processed masks, so their edges stay as smooth as the model makes them.
Where no logits in the image's frame exist (masks found in image crops) and for label maps
(semantic classes, panoptic segment ids, which must not be averaged), the nearest processed
pixel is used. Coordinates are scaled per axis by ``W0 / W`` and ``H0 / H``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from uniovseg.inference.predictions import MaskLabels, PromptPrediction
from uniovseg.modeling.automatic_mask_engine import AutomaticMaskResult
from uniovseg.modeling.mask_postprocessing import masks_to_boxes, remove_small_regions
from uniovseg.modeling.open_vocab_postprocessing import resize_mask_logits

__all__ = ["OutputUpscaler"]

# Masks brought to the original size at a time: bounds the full-size copies in memory.
_CHUNK = 16


def _size(name: str, size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or min(int(size[0]), int(size[1])) < 1:
        raise ValueError(f"{name} must be (H, W) with both >= 1, got {tuple(size)}")
    return int(size[0]), int(size[1])


@dataclasses.dataclass(frozen=True)
class OutputUpscaler:
    """Maps the predictions of one processed image to its original size.

    Example::

        loaded = read_image(path, max_side=2048)
        predictor.set_image(loaded.image)
        upscaler = OutputUpscaler.from_predictor(predictor, loaded.original_size)
        records = upscaler.automatic_records(*generator.result_for_current_image())
        labels = upscaler.label_map(predictor.predict_semantic().labels)

    Attributes:
        processed_size: ``(H, W)`` of the image the predictions were made on.
        original_size: ``(H0, W0)`` of the original image.
        valid_size: ``(h, w)`` of the processed image's resized region in the network input.
        padded_size: ``(S, S)`` of the padded network input.
    """

    processed_size: tuple[int, int]
    original_size: tuple[int, int]
    valid_size: tuple[int, int]
    padded_size: tuple[int, int]

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _size(field.name, getattr(self, field.name)))

    @classmethod
    def from_predictor(cls, predictor, original_size: Sequence[int]) -> OutputUpscaler:
        """The upscaler of the image the calling thread set on ``predictor``.

        Args:
            predictor: A :class:`~uniovseg.inference.predictor.UniOVSegPredictor` with an image.
            original_size: ``(H0, W0)`` of the file that image was read from.
        """
        if not predictor.is_image_set:
            raise ValueError("set an image on the predictor first (predictor.set_image)")
        return cls(
            processed_size=predictor.original_size,
            original_size=tuple(original_size),
            valid_size=predictor.input_size,
            padded_size=predictor.padded_size,
        )

    @property
    def is_identity(self) -> bool:
        """Whether the processed image is the original (nothing to do)."""
        return self.processed_size == self.original_size

    @property
    def scale_xy(self) -> np.ndarray:
        """float64 [2]: ``(W0 / W, H0 / H)``, processed -> original pixels."""
        (height, width), (height0, width0) = self.processed_size, self.original_size
        return np.array([width0 / width, height0 / height])

    # ------------------------------------------------------------------ coordinates
    def points(self, points: np.ndarray) -> np.ndarray:
        """float [..., 2] (x, y) processed pixels -> original pixels (float64)."""
        return np.asarray(points, dtype=np.float64) * self.scale_xy

    def boxes(self, boxes: np.ndarray) -> np.ndarray:
        """float [..., 4] XYXY processed pixels -> original pixels (float64)."""
        return np.asarray(boxes, dtype=np.float64) * np.tile(self.scale_xy, 2)

    # ------------------------------------------------------------------ label maps and masks
    def _nearest_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """For each original row / column, the processed one whose centre is nearest."""
        (height, width), (height0, width0) = self.processed_size, self.original_size
        rows = np.minimum(
            ((np.arange(height0) + 0.5) * height / height0).astype(np.int64), height - 1
        )
        cols = np.minimum(((np.arange(width0) + 0.5) * width / width0).astype(np.int64), width - 1)
        return rows, cols

    def label_map(self, labels: np.ndarray) -> np.ndarray:
        """Any per-pixel ids [..., H, W] (class indices, panoptic segment ids, bool masks) at
        the original size [..., H0, W0], nearest neighbour; the same array when identity."""
        labels = np.asarray(labels)
        if labels.shape[-2:] != self.processed_size:
            raise ValueError(
                f"expected a map of the processed size {self.processed_size}, got {labels.shape}"
            )
        if self.is_identity:
            return labels
        rows, cols = self._nearest_indices()
        return labels[..., rows[:, None], cols[None, :]]

    def masks_from_logits(self, lowres_logits: torch.Tensor) -> torch.Tensor:
        """Low-resolution logits [K, h, w] over the padded input -> bool masks [K, H0, W0]."""
        logits = resize_mask_logits(
            torch.as_tensor(lowres_logits).float(),
            valid_size=self.valid_size,
            output_size=self.original_size,
            padded_size=self.padded_size,
        )
        return logits > 0

    # ------------------------------------------------------------------ predictions
    def prompt_prediction(self, prediction: PromptPrediction) -> PromptPrediction:
        """A prompted prediction with its masks at the original size ([N, M, H0, W0] or
        [M, H0, W0] for a single prompt), re-rendered from its ``low_res_logits``; IoU and
        stability scores are kept (they do not depend on the output size)."""
        if self.is_identity:
            return prediction
        lowres = torch.as_tensor(prediction.low_res_logits)
        leading = lowres.shape[:-2]
        masks = torch.zeros((int(np.prod(leading)), *self.original_size), dtype=torch.bool)
        flat = lowres.reshape(-1, *lowres.shape[-2:])
        for start in range(0, flat.shape[0], _CHUNK):
            masks[start : start + _CHUNK] = self.masks_from_logits(flat[start : start + _CHUNK])
        return dataclasses.replace(
            prediction, masks=masks.reshape(*leading, *self.original_size).numpy()
        )

    def automatic_result(
        self, result: AutomaticMaskResult, *, min_region_area: int = 0
    ) -> AutomaticMaskResult:
        """Automatic masks at the original size (all at once: see :meth:`automatic_records`
        to bound the memory).

        Masks of the whole image are re-rendered from ``mask_logits_lowres``; masks found in
        image crops (``crop_boxes``) are enlarged from the processed masks. Point prompts,
        boxes and crop boxes are scaled; ``mask_probs`` is dropped.

        Args:
            result: Automatic masks of the processed image.
            min_region_area: The engine's ``min_region_area`` in processed pixels, applied
                again (scaled by the area ratio) to re-rendered masks.
        """
        if tuple(result.original_size) != self.processed_size:
            raise ValueError(
                f"the result is of size {tuple(result.original_size)}, not the processed size "
                f"{self.processed_size}"
            )
        if self.is_identity:
            return result
        crop_boxes = getattr(result, "crop_boxes", None)
        if crop_boxes is None and len(result):
            masks = self.masks_from_logits(result.mask_logits_lowres.cpu())
            area_ratio = np.prod(self.original_size) / np.prod(self.processed_size)
            min_area = round(min_region_area * area_ratio)
            processed = result.masks.cpu().numpy()
            for k in range(masks.shape[0]):
                mask = masks[k].numpy()
                if min_area > 0:
                    mask = remove_small_regions(mask, min_area)[0]
                if not mask.any():  # vanished in re-rendering: keep what the user was shown
                    mask = self.label_map(processed[k])
                masks[k] = torch.from_numpy(mask)
        else:
            masks = torch.from_numpy(self.label_map(result.masks.cpu().numpy()).copy())
        device = result.masks.device
        masks = masks.to(device)
        scale = torch.as_tensor(self.scale_xy, dtype=torch.float32, device=device)
        changes = {
            "masks": masks,
            "boxes": masks_to_boxes(masks),
            "point_coords": result.point_coords.float() * scale.to(result.point_coords.device),
            "original_size": self.original_size,
            "mask_probs": None,
        }
        if crop_boxes is not None:
            scaled = crop_boxes.double() * scale.double().repeat(2).to(crop_boxes.device)
            changes["crop_boxes"] = scaled.round().to(crop_boxes.dtype)
        return dataclasses.replace(result, **changes)

    def automatic_records(
        self,
        result: AutomaticMaskResult,
        labels: MaskLabels | None = None,
        *,
        output_mode: str = "coco_rle",
        min_region_area: int = 0,
    ) -> list[dict]:
        """SAM records (see ``automatic_mask_generator_api.automatic_records``) of automatic
        masks at the original size: ``segmentation`` of size ``[H0, W0]``, ``bbox``, ``area``,
        ``point_coords`` and ``crop_box`` in original pixels.

        Masks are brought to the original size 16 at a time, so memory holds at most 16
        full-size masks beyond the records.

        Args:
            result: Automatic masks of the processed image.
            labels: Optional open-vocabulary labels of its masks.
            output_mode: ``"coco_rle"`` or another mode of ``automatic_records``.
            min_region_area: See :meth:`automatic_result`.
        """
        from uniovseg.inference.automatic_mask_generator_api import automatic_records

        if labels is not None and len(labels.labels) != len(result):
            raise ValueError(f"got {len(labels.labels)} labels for {len(result)} masks")
        records = []
        for start in range(0, len(result), _CHUNK):
            index = torch.arange(start, min(start + _CHUNK, len(result)))
            chunk = self.automatic_result(
                _select(result, index.to(result.masks.device)), min_region_area=min_region_area
            )
            chunk_labels = None
            if labels is not None:
                rows = index.numpy()
                chunk_labels = MaskLabels(
                    labels.labels[rows], labels.scores[rows], labels.class_names
                )
            records += automatic_records(chunk, output_mode, chunk_labels)
        return records


def _select(result: AutomaticMaskResult, index: torch.Tensor) -> AutomaticMaskResult:
    """The masks ``index`` of a result (every per-mask field sliced)."""
    per_mask = {}
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if torch.is_tensor(value):
            per_mask[field.name] = value[index.to(value.device)]
    return dataclasses.replace(result, **per_mask)
