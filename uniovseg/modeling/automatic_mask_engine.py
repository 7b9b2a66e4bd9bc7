"""Automatic (whole-image) mask generation from a regular grid of point prompts.

The engine is model-agnostic: it drives a ``predict_fn`` that maps point prompts to mask and IoU
logits (the promptable network run on features computed once per image) and turns the grid's
predictions into a de-duplicated set of masks. :meth:`UniOVSeg.automatic_masks
<uniovseg.modeling.meta_arch.UniOVSeg.automatic_masks>` runs it on an image encoding; every
caller (inference, the predictor and automatic mask generator, stage-2 alignment) goes through
that method.

Frames used below (:class:`~uniovseg.modeling.image_frame.ImageFrame`, the release's geometry):
    * original: the image as read, ``(H0, W0)``;
    * padded: the network input ``(S_h, S_w)`` (release: 1024 x 1024), holding the image resized
      so that its longest side fits, in the top-left ``valid`` region ``(h_v, w_v)``; the rest is
      bottom/right padding;
    * low-res: the network's mask logits, at stride 4 of the input (256 x 256 for 1024);
    * work: the padded frame scaled by ``nms_scale`` (release: 0.5) and cropped to the valid
      region; stability scores and NMS are computed there.

Pipeline per chunk of ``points_per_batch`` grid points: predict 4 masks per point, keep masks
whose predicted IoU passes the threshold, compute their stability score in the work frame and keep
the stable ones. Then one containment-aware NMS over all survivors, and only the kept masks are
brought to the original image size.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

import numpy as np
import torch
from detectron2.config import configurable

from .image_frame import ImageFrame
from .mask_postprocessing import (
    mask_nms,
    masks_to_boxes,
    remove_small_regions,
    resize_and_crop,
    stability_score,
)
from .open_vocab_postprocessing import resize_mask_logits
from .point_grid import inference_point_grid

__all__ = [
    "AutomaticMaskGenerationEngine",
    "AutomaticMaskResult",
    "PredictFn",
    "check_integer",
    "check_number",
    "check_threshold",
]

logger = logging.getLogger(__name__)

# point_coords [1, P, 2] (x, y) in input pixels
#   -> (mask_logits [1, P, M, h, w], iou_logits [1, P, M])
PredictFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# Masks are upsampled this many at a time, which bounds the float copies to
# _UPSAMPLE_BATCH x (frame size) (64 MiB for 16 masks at 1024 x 1024).
_UPSAMPLE_BATCH = 16


@dataclass
class AutomaticMaskResult:
    """The masks kept by automatic mask generation for one image, by decreasing predicted IoU.

    Attributes:
        masks: bool [K, H0, W0], at the original image size.
        iou_scores: float32 [K], predicted IoU (sigmoid of the IoU logit), in [0, 1].
        stability_scores: float32 [K], in [0, 1] (see ``stability_score``).
        point_coords: float32 [K, 2], the (x, y) point prompt of each mask in original pixels.
        boxes: float32 [K, 4], tight XYXY boxes of ``masks`` in original pixels (pixel edges:
            x2 = last column + 1).
        mask_logits_lowres: float32 [K, h, w], the network's mask logits at stride 4 of the
            padded input frame (padding included), e.g. to pool CLIP features under each mask.
        point_indices: int64 [K], index of the prompt in the row-major point grid.
        granularity_indices: int64 [K], which of the point's multi-mask outputs (0..M-1).
        original_size: (H0, W0).
        mask_probs: float32 [K, H0, W0], the sigmoid of the logits that ``masks`` threshold
            (before the small-region clean-up), when ``generate(return_mask_probs=True)``: the
            soft masks of semantic/panoptic assembly, computed here once instead of resizing
            the low-res logits a second time. None otherwise.
        crop_boxes: int64 [K, 4], for masks found in image crops (``AutomaticMaskGenerator``'s
            ``crop_n_layers``): the XYXY box of the crop, in original pixels, that each mask
            came from; ``point_coords``, ``boxes`` and ``masks`` are then in the whole
            image's frame, while ``mask_logits_lowres`` and ``point_indices`` stay in the
            crop's input frame and point grid. None: every mask came from the whole image.
    """

    masks: torch.Tensor
    iou_scores: torch.Tensor
    stability_scores: torch.Tensor
    point_coords: torch.Tensor
    boxes: torch.Tensor
    mask_logits_lowres: torch.Tensor
    point_indices: torch.Tensor
    granularity_indices: torch.Tensor
    original_size: tuple[int, int]
    mask_probs: torch.Tensor | None = None
    crop_boxes: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def select(self, keep: torch.Tensor) -> AutomaticMaskResult:
        """The masks ``keep`` (bool [K] or int64 indices, in the order given) of this result."""
        per_mask = {
            f.name: getattr(self, f.name)[keep]
            for f in fields(self)
            if f.name != "original_size" and getattr(self, f.name) is not None
        }
        return replace(self, **per_mask)


class AutomaticMaskGenerationEngine:
    """Point-grid prompting, score filtering and containment-aware NMS for one image at a time."""

    @configurable
    def __init__(
        self,
        *,
        points_per_side: int = 20,
        points_per_batch: int = 200,
        pred_iou_thresh: float = 0.619,
        stability_score_thresh: float = 0.92,
        stability_score_offset: float = 0.1,
        stability_score_center: float = 0.0,
        nms_iou_thresh: float = 0.5,
        nms_containment_thresh: float = 0.7,
        nms_scale: float = 0.5,
        min_region_area: int = 0,
    ) -> None:
        """
        Args:
            points_per_side: The grid has ``points_per_side**2`` point prompts (release: 20).
            points_per_batch: Prompts per network call; bounds memory, never changes the result.
            pred_iou_thresh: Keep masks whose sigmoid(IoU logit) is at least this. The release
                applies the sigmoid twice and keeps sigmoid(sigmoid(x)) >= 0.65, which is
                sigmoid(x) >= ln(0.65 / 0.35) = 0.6190; we apply it once and default to 0.619.
            stability_score_thresh: Keep masks whose stability score is at least this
                (release demo: 0.92); 0 disables the filter.
            stability_score_offset: Half-width of the stability threshold band, in logits.
            stability_score_center: Centre of the band, in logits (0 = the binarisation
                threshold; the release's demo uses 0.5 with offset 0.1, see ``stability_score``).
            nms_iou_thresh: A higher-scored mask removes another when their IoU is >= this.
            nms_containment_thresh: ... or when at least this fraction of the other lies inside
                it (release: 0.5 and 0.7). Either threshold above 1 turns its rule off.
            nms_scale: Resolution of the NMS and stability frame relative to the input frame
                (release: 0.5, i.e. 512 x 512 for a 1024 input).
            min_region_area: Fill holes and remove islands smaller than this many pixels in each
                returned mask (original size); 0 disables it (release demo: 15).

        Raises:
            ValueError: An argument is not a finite number in its range (thresholds >= 0,
                ``nms_scale`` in (0, 1], counts integers), naming it and the range.
        """
        self.points_per_side = check_integer("points_per_side", points_per_side, low=1)
        self.points_per_batch = check_integer("points_per_batch", points_per_batch, low=1)
        self.pred_iou_thresh = check_threshold(
            "pred_iou_thresh", pred_iou_thresh, above_one="keeps no mask"
        )
        self.stability_score_thresh = check_threshold(
            "stability_score_thresh", stability_score_thresh, above_one="keeps no mask"
        )
        self.stability_score_offset = check_number(
            "stability_score_offset", stability_score_offset, low=0
        )
        self.stability_score_center = check_number("stability_score_center", stability_score_center)
        self.nms_iou_thresh = check_threshold(
            "nms_iou_thresh", nms_iou_thresh, above_one="turns the rule off"
        )
        self.nms_containment_thresh = check_threshold(
            "nms_containment_thresh", nms_containment_thresh, above_one="turns the rule off"
        )
        self.nms_scale = check_number("nms_scale", nms_scale, low=0, high=1, low_open=True)
        self.min_region_area = check_integer("min_region_area", min_region_area, low=0)

    @classmethod
    def from_config(cls, cfg) -> dict:
        a = cfg.MODEL.UNIOVSEG.AUTOMATIC
        return {
            "points_per_side": a.POINTS_PER_SIDE,
            "points_per_batch": a.POINTS_PER_BATCH,
            "pred_iou_thresh": a.PRED_IOU_THRESH,
            "stability_score_thresh": a.STABILITY_SCORE_THRESH,
            "stability_score_offset": a.STABILITY_SCORE_OFFSET,
            "stability_score_center": a.STABILITY_SCORE_CENTER,
            "nms_iou_thresh": a.NMS_IOU_THRESH,
            "nms_containment_thresh": a.NMS_CONTAINMENT_THRESH,
            "nms_scale": a.NMS_SCALE,
            "min_region_area": a.MIN_REGION_AREA,
        }

    @torch.no_grad()
    def generate(
        self,
        predict_fn: PredictFn,
        frame: ImageFrame,
        *,
        device: torch.device | str | None = None,
        return_mask_probs: bool = False,
    ) -> AutomaticMaskResult:
        """Runs the point grid through ``predict_fn`` and returns the de-duplicated masks.

        Args:
            predict_fn: Maps ``point_coords`` float32 [1, P, 2] ((x, y) in input pixels, on
                ``device``) to ``(mask_logits [1, P, M, h, w], iou_logits [1, P, M])``; the mask
                logits cover the whole padded input frame (h, w = input size / stride).
            frame: The image's frame: the grid covers its ``valid_size`` region of the padded
                input (``padded_size``); returned masks have its ``original_size``.
            device: Where the point grid is built (the network's device); default CPU.
            return_mask_probs: Also return the kept masks' probabilities at the original size
                (``AutomaticMaskResult.mask_probs``).

        Returns:
            An :class:`AutomaticMaskResult` on the device of ``predict_fn``'s outputs; K = 0 is a
            normal result (nothing passed the filters).
        """
        original_size, valid_size, padded_size = frame
        _check_size("valid_size", valid_size)
        _check_size("padded_size", padded_size)
        _check_size("original_size", original_size)
        if valid_size[0] > padded_size[0] or valid_size[1] > padded_size[1]:
            raise ValueError(
                f"valid_size {tuple(valid_size)} must fit inside padded_size "
                f"{tuple(padded_size)}: the image is padded bottom/right, never cropped"
            )
        grid = inference_point_grid(self.points_per_side, frame).to(device or "cpu")
        work_size = (
            max(1, round(padded_size[0] * self.nms_scale)),
            max(1, round(padded_size[1] * self.nms_scale)),
        )
        work_valid = (
            min(work_size[0], int(np.ceil(valid_size[0] * self.nms_scale))),
            min(work_size[1], int(np.ceil(valid_size[1] * self.nms_scale))),
        )

        kept: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("lowres", "work", "iou", "stability", "point", "granularity")
        }
        lowres_shape: tuple[int, int] | None = None
        out_device = None
        for start in range(0, grid.shape[0], self.points_per_batch):
            coords = grid[start : start + self.points_per_batch]
            mask_logits, iou_logits = predict_fn(coords[None])
            _check_predictions(mask_logits, iou_logits, coords.shape[0], padded_size)
            mask_logits, iou_logits = mask_logits[0], iou_logits[0]  # [P, M, h, w], [P, M]
            lowres_shape = tuple(mask_logits.shape[-2:])
            out_device = mask_logits.device

            # One sigmoid, not the release's two: see `pred_iou_thresh` in __init__.
            iou_probs = iou_logits.float().sigmoid()
            passed = iou_probs >= self.pred_iou_thresh
            point_idx, gran_idx = torch.nonzero(passed, as_tuple=True)
            if point_idx.numel() == 0:
                continue
            # [k, h, w]; a view, not a copy, when every mask passed.
            lowres = _select(mask_logits.flatten(0, 1), passed.flatten()).float()
            del mask_logits  # only the passing masks stay alive (all of them: `lowres` views them)
            # Stability on the work-frame logits: the release's demo scores full-resolution
            # logits; an area ratio barely changes at half resolution and this bounds memory.
            work_masks, stability, ok = self._work_frame(lowres, work_size, work_valid)
            kept["lowres"].append(_select_rows(lowres, ok))
            kept["work"].append(work_masks)
            kept["iou"].append(iou_probs[point_idx, gran_idx][ok])
            kept["stability"].append(stability[ok])
            kept["point"].append(point_idx[ok] + start)
            kept["granularity"].append(gran_idx[ok])
            del lowres, work_masks

        assert lowres_shape is not None  # the grid has >= 1 point
        if not kept["iou"] or sum(t.numel() for t in kept["iou"]) == 0:
            logger.debug("automatic mask generation: no mask passed the score filters")
            return _empty_result(original_size, lowres_shape, out_device, return_mask_probs)
        # The candidates' low-res logits stay in their per-chunk pieces: only the few masks
        # that survive NMS are gathered from them (a concatenation would copy them all).
        lowres_pieces = kept.pop("lowres")
        cat = {}
        for key in list(kept):  # concatenate and free the per-chunk pieces one field at a time
            cat[key] = torch.cat(kept.pop(key))
        num_candidates = cat["iou"].numel()

        keep = mask_nms(
            cat["work"],
            cat["iou"],
            iou_threshold=self.nms_iou_thresh,
            containment_threshold=self.nms_containment_thresh,
        )
        del cat["work"]
        cat = {k: v[keep] for k, v in cat.items()}
        cat["lowres"] = _gather_rows(lowres_pieces, keep)
        del lowres_pieces

        masks, mask_probs = self._to_original(
            cat["lowres"], valid_size, padded_size, original_size, return_mask_probs
        )
        if self.min_region_area > 0:
            masks = self._remove_small_regions(masks)
        # A mask can vanish at a much smaller original size; such masks carry nothing.
        nonempty = masks.flatten(1).any(dim=1)
        if not bool(nonempty.all()):
            masks = masks[nonempty]
            cat = {k: v[nonempty] for k, v in cat.items()}
            mask_probs = mask_probs[nonempty] if mask_probs is not None else None

        scale = torch.tensor(
            [original_size[1] / valid_size[1], original_size[0] / valid_size[0]],
            device=grid.device,
        )
        point_coords = (grid * scale)[cat["point"].to(grid.device)].to(masks.device)
        logger.debug(
            "automatic mask generation: %d grid masks passed the filters, %d after NMS",
            num_candidates,
            masks.shape[0],
        )
        return AutomaticMaskResult(
            masks=masks,
            iou_scores=cat["iou"],
            stability_scores=cat["stability"],
            point_coords=point_coords,
            boxes=masks_to_boxes(masks),
            mask_logits_lowres=cat["lowres"],
            point_indices=cat["point"],
            granularity_indices=cat["granularity"],
            original_size=(int(original_size[0]), int(original_size[1])),
            mask_probs=mask_probs,
        )

    def _work_frame(
        self, lowres: torch.Tensor, work_size: tuple[int, int], work_valid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Low-res logits [k, h, w] -> stability scores [k], which masks pass the stability
        filter (bool [k]) and the work-frame bool masks of those only, [k_ok, *work_valid].
        Float copies exist for _UPSAMPLE_BATCH masks at a time only."""
        num = lowres.shape[0]
        # Rows are filled front to back with the masks that pass; the rest is never written
        # (and, on CPU, never committed to memory).
        masks = torch.empty((num, *work_valid), dtype=torch.bool, device=lowres.device)
        stability = torch.empty(num, dtype=torch.float32, device=lowres.device)
        ok = torch.empty(num, dtype=torch.bool, device=lowres.device)
        # A mask passing a positive stability threshold has pixels above center + offset; when
        # that level is >= 0 they are inside the mask, so it cannot be empty.
        nonempty_implied = (
            self.stability_score_thresh > 0
            and self.stability_score_center + self.stability_score_offset >= 0
        )
        filled = 0
        for s in range(0, num, _UPSAMPLE_BATCH):
            logits = resize_and_crop(lowres[s : s + _UPSAMPLE_BATCH], work_size, work_valid)
            scores = stability_score(
                logits, self.stability_score_offset, self.stability_score_center
            )
            good = scores >= self.stability_score_thresh
            if not nonempty_implied:
                # Empty masks in the work frame (a few pixels at most) cannot be de-duplicated.
                good &= (logits > 0).flatten(1).any(dim=1)
            stability[s : s + _UPSAMPLE_BATCH] = scores
            ok[s : s + _UPSAMPLE_BATCH] = good
            count = int(good.sum())
            torch.gt(_select(logits, good), 0, out=masks[filled : filled + count])
            filled += count
        return masks[:filled], stability, ok

    @staticmethod
    def _to_original(
        lowres: torch.Tensor,
        valid_size: tuple[int, int],
        padded_size: tuple[int, int],
        original_size: tuple[int, int],
        return_probs: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Low-res logits [K, h, w] -> (bool masks [K, H0, W0], their probabilities or None):
        upsample to the input frame, crop the padding away, resize to the original size,
        threshold at logit 0."""
        shape = (lowres.shape[0], *original_size)
        masks = torch.empty(shape, dtype=torch.bool, device=lowres.device)
        probs = None
        if return_probs:
            probs = torch.empty(shape, dtype=torch.float32, device=lowres.device)
        for s in range(0, lowres.shape[0], _UPSAMPLE_BATCH):
            logits = resize_mask_logits(
                lowres[s : s + _UPSAMPLE_BATCH],
                valid_size=valid_size,
                output_size=original_size,
                padded_size=padded_size,
            )
            torch.gt(logits, 0, out=masks[s : s + _UPSAMPLE_BATCH])
            if probs is not None:
                torch.sigmoid(logits, out=probs[s : s + _UPSAMPLE_BATCH])
        return masks, probs

    def _remove_small_regions(self, masks: torch.Tensor) -> torch.Tensor:
        # cv2 connected components on CPU; only the few returned masks go through it. Unlike
        # SAM we do not re-run NMS afterwards: the edits are below min_region_area pixels.
        cleaned = [remove_small_regions(m, self.min_region_area)[0] for m in masks.cpu().numpy()]
        return torch.from_numpy(np.stack(cleaned)).to(masks.device)


class _RowSelection(NamedTuple):
    """Some rows of a tensor, by index, not yet copied out (see :func:`_select_rows`)."""

    tensor: torch.Tensor  # [N, ...]
    rows: torch.Tensor  # int64 [n], the selected rows of `tensor`


def _gather_rows(pieces: list[torch.Tensor | _RowSelection], indices: torch.Tensor) -> torch.Tensor:
    """``torch.cat(pieces)[indices]`` without concatenating the pieces first."""
    first = pieces[0].tensor if isinstance(pieces[0], _RowSelection) else pieces[0]
    out = first.new_empty((indices.numel(), *first.shape[1:]))
    start = 0
    for piece in pieces:  # one indexing per chunk of prompts, not per mask
        size = piece.rows.numel() if isinstance(piece, _RowSelection) else piece.shape[0]
        inside = (indices >= start) & (indices < start + size)
        if bool(inside.any()):
            local = indices[inside] - start
            if isinstance(piece, _RowSelection):
                rows = piece.tensor[piece.rows[local.to(piece.rows.device)]]
            else:
                rows = piece[local.to(piece.device)]
            out[inside.to(out.device)] = rows
        start += size
    return out


def _select(tensor: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``tensor[keep]`` for a bool [N] ``keep``, without the copy when every row is kept."""
    return tensor if bool(keep.all()) else tensor[keep]


def _select_rows(tensor: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The rows ``keep`` of ``tensor`` for later gathering: ``tensor[keep]``, except that when
    most rows are kept, a :class:`_RowSelection` (the whole tensor and the kept row indices),
    which skips a large copy at the price of holding the few dropped rows a little longer."""
    if bool(keep.all()) or int(keep.sum()) < keep.numel() // 2:
        return _select(tensor, keep)
    return _RowSelection(tensor, torch.nonzero(keep).flatten())


def _empty_result(
    original_size: tuple[int, int],
    lowres_shape: tuple[int, int],
    device: torch.device | None,
    return_mask_probs: bool,
) -> AutomaticMaskResult:
    dtype = torch.float32
    long = {"dtype": torch.long, "device": device}
    return AutomaticMaskResult(
        masks=torch.zeros((0, *original_size), dtype=torch.bool, device=device),
        iou_scores=torch.zeros(0, dtype=dtype, device=device),
        stability_scores=torch.zeros(0, dtype=dtype, device=device),
        point_coords=torch.zeros((0, 2), dtype=dtype, device=device),
        boxes=torch.zeros((0, 4), dtype=dtype, device=device),
        mask_logits_lowres=torch.zeros((0, *lowres_shape), dtype=dtype, device=device),
        point_indices=torch.zeros(0, **long),
        granularity_indices=torch.zeros(0, **long),
        original_size=(int(original_size[0]), int(original_size[1])),
        mask_probs=(
            torch.zeros((0, *original_size), dtype=dtype, device=device)
            if return_mask_probs
            else None
        ),
    )


def check_number(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    note: str = "",
) -> float:
    """``value`` as a float, or a ValueError naming ``name`` and the accepted range.

    Args:
        name: The argument's name, for the message.
        value: Any real number (Python or NumPy); bools, NaN and infinities are refused.
        low, high: Inclusive bounds (``low`` is exclusive with ``low_open``); None: unbounded.
        note: Appended to the range in the message (what values mean).
    """
    if low is None and high is None:
        accepted = "a finite number"
    elif high is None:
        accepted = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        accepted = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    accepted += note
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    number = float(value)
    if (
        not math.isfinite(number)
        or (low is not None and (number <= low if low_open else number < low))
        or (high is not None and number > high)
    ):
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    return number


def check_integer(name: str, value, *, low: int) -> int:
    """``value`` as an int (a whole float such as 20.0 is accepted), or a ValueError naming
    ``name`` and the accepted range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not number.is_integer() or number < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(number)


def check_threshold(name: str, value, *, above_one: str) -> float:
    """A threshold on a fraction (a probability, a score, an overlap), usually in [0, 1]; values
    above 1 are accepted with the meaning ``above_one`` says (tests and configs use 1.01 to
    keep no mask or to turn an NMS rule off)."""
    return check_number(name, value, low=0, note=f" (a fraction in [0, 1]; above 1 {above_one})")


def _check_size(name: str, size) -> None:
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"{name} must be (h, w) with positive integers, got {size!r}")


def _check_predictions(
    mask_logits: torch.Tensor, iou_logits: torch.Tensor, num_points: int, padded_size
) -> None:
    if (
        mask_logits.dim() != 5
        or mask_logits.shape[:2] != (1, num_points)
        or iou_logits.shape != mask_logits.shape[:3]
    ):
        raise ValueError(
            "predict_fn must return mask_logits [1, P, M, h, w] and iou_logits [1, P, M] for "
            f"P = {num_points} points, got {tuple(mask_logits.shape)} and "
            f"{tuple(iou_logits.shape)}"
        )
    if mask_logits.shape[-2] > padded_size[0] or mask_logits.shape[-1] > padded_size[1]:
        raise ValueError(
            f"mask logits of size {tuple(mask_logits.shape[-2:])} are larger than the input "
            f"frame {tuple(padded_size)}; they must cover the padded input at a stride >= 1"
        )
