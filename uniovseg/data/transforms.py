"""Augmentations of the image-mask training recipe: large-scale jitter, crop/pad, flip, SSD colour.

The stage-1 recipe (release config: 1024 crops, scale jitter 0.8-1.2, horizontal flip, SSD colour
jitter) is the "large-scale jitter" of Mask2Former/FC-CLIP: resize the image so that it fits
inside ``scale x crop_size`` (aspect ratio kept), cut a random ``crop_size`` window when the
result is larger, and pad bottom/right to ``crop_size`` when it is smaller.

detectron2's ``ResizeScale`` + ``FixedSizeCrop`` + ``RandomFlip`` do the same thing, but they
transform every mask separately at full resolution. SA-1B images are ~1500x2250 with up to 40 kept
masks, so the geometry here is folded into one pair of integer index maps (rows, columns of the
source pixel of every output pixel): resize, crop and flip of a mask become two gathers of
contiguous runs and one transpose, and only the pixels that survive the crop are ever touched.

Colour jitter is photometric only (it never touches masks) and follows the SSD recipe used by
detectron2's PointRend ``ColorAugSSDTransform``: random brightness, contrast, saturation and hue,
each applied with probability 1/2, contrast either before or after the HSV changes.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from uniovseg.modeling.image_preprocessing import pad_bottom_right, resize_uint8

__all__ = ["ColorAugSSD", "ScaleJitterCrop", "sample_scale_jitter_crop"]


class ScaleJitterCrop(NamedTuple):
    """Geometry of one large-scale-jitter sample, from an (H, W) source to an S x S output.

    The source is resized to ``(resized_h, resized_w)``; the window
    ``[y0, y0 + crop_h) x [x0, x0 + crop_w)`` of the resized image is kept (optionally mirrored
    left-right) and placed at the top-left of an ``S x S`` canvas; the rest is padding.

    Attributes:
        src_h: Source height H in pixels.
        src_w: Source width W in pixels.
        resized_h: Height of the resized (uncropped) image.
        resized_w: Width of the resized (uncropped) image.
        y0: Top row of the crop window in the resized image.
        x0: Left column of the crop window in the resized image.
        crop_h: Height of the kept window = height of the valid (unpadded) output region.
        crop_w: Width of the kept window = width of the valid (unpadded) output region.
        size: Side S of the square output canvas.
        flip: Whether the kept window is mirrored left-right.
    """

    src_h: int
    src_w: int
    resized_h: int
    resized_w: int
    y0: int
    x0: int
    crop_h: int
    crop_w: int
    size: int
    flip: bool

    def source_rows(self) -> np.ndarray:
        """Source row of each output row of the valid region, nearest-neighbour at pixel centres.

        Returns:
            int64 array [crop_h] with values in [0, src_h).
        """
        return _nearest_source_index(self.y0, self.crop_h, self.src_h, self.resized_h)

    def source_cols(self) -> np.ndarray:
        """Source column of each output column of the valid region (mirrored when ``flip``).

        Returns:
            int64 array [crop_w] with values in [0, src_w).
        """
        cols = _nearest_source_index(self.x0, self.crop_w, self.src_w, self.resized_w)
        return cols[::-1].copy() if self.flip else cols

    def apply_image(self, image: np.ndarray, pad_value: float) -> np.ndarray:
        """Resizes, crops, flips and pads an image.

        Args:
            image: uint8 array [H, W, C] (C = 1 or 3) with H, W = ``src_h``, ``src_w``.
            pad_value: Value of the padded pixels (0-255), in pixel space.

        Returns:
            uint8 array [S, S, C]; the valid region is ``[:crop_h, :crop_w]``.
        """
        if image.shape[:2] != (self.src_h, self.src_w):
            raise ValueError(
                f"image is {image.shape[:2]} but the jitter was sampled for "
                f"{(self.src_h, self.src_w)}; sample it from this image's size"
            )
        # The release's resize (detectron2 ResizeScale -> ResizeTransform: PIL bilinear on the
        # uint8 image), the same function as at test time, so train and test inputs agree.
        resized = resize_uint8(image, (self.resized_h, self.resized_w))
        window = resized[self.y0 : self.y0 + self.crop_h, self.x0 : self.x0 + self.crop_w]
        if self.flip:
            window = window[:, ::-1]
        # Grey padding in pixel space, before normalisation (detectron2 FixedSizeCrop).
        return pad_bottom_right(window, (self.size, self.size), pad_value=pad_value)

    def apply_mask_into(self, mask_wh: np.ndarray, out: np.ndarray) -> None:
        """Resizes (nearest), crops and flips one binary mask into a preallocated canvas.

        Args:
            mask_wh: uint8/bool array [W, H], the TRANSPOSED mask (``decode(rle).T`` of a
                pycocotools mask is this layout for free, C-contiguous).
            out: bool or uint8 array [S, S] to write; only ``[:crop_h, :crop_w]`` is written.
        """
        if mask_wh.shape != (self.src_w, self.src_h):
            raise ValueError(
                f"mask is [W, H] = {mask_wh.shape} but the jitter expects "
                f"{(self.src_w, self.src_h)}"
            )
        if mask_wh.dtype != np.uint8:
            mask_wh = mask_wh.view(np.uint8) if mask_wh.dtype == bool else mask_wh.astype(np.uint8)
        # Whole source columns are contiguous rows of mask_wh: gather them, transpose once with
        # OpenCV's blocked transpose, then gather whole rows. Both gathers copy contiguous runs;
        # a direct 2-D fancy index would read one byte per cache line.
        columns = np.take(mask_wh, self.source_cols(), axis=0)  # [crop_w, H]
        rows_first = cv2.transpose(np.ascontiguousarray(columns))  # [H, crop_w]
        target = out.view(np.uint8) if out.dtype == bool else out
        target[: self.crop_h, : self.crop_w] = np.take(rows_first, self.source_rows(), axis=0)

    def apply_masks(self, masks_gwh: np.ndarray) -> np.ndarray:
        """Resizes (nearest), crops, flips and pads a stack of binary masks.

        Args:
            masks_gwh: uint8/bool array [G, W, H] (transposed masks, see
                :meth:`apply_mask_into`).

        Returns:
            bool array [G, S, S]; everything outside ``[:crop_h, :crop_w]`` is False.
        """
        out = np.zeros((masks_gwh.shape[0], self.size, self.size), dtype=bool)
        for mask_wh, canvas in zip(masks_gwh, out, strict=True):
            self.apply_mask_into(mask_wh, canvas)
        return out


def _nearest_source_index(start: int, length: int, src_len: int, resized_len: int) -> np.ndarray:
    # Output pixel i of the window is resized pixel (start + i); its centre maps back to source
    # coordinate (start + i + 0.5) * src/resized, the pixel-centre convention of PIL and cv2.
    idx = np.arange(start, start + length, dtype=np.float64)
    src = np.floor((idx + 0.5) * (src_len / resized_len)).astype(np.int64)
    return np.clip(src, 0, src_len - 1)


def sample_scale_jitter_crop(
    height: int,
    width: int,
    *,
    crop_size: int,
    min_scale: float,
    max_scale: float,
    flip_prob: float,
    rng: np.random.Generator,
) -> ScaleJitterCrop:
    """Draws the geometry of one large-scale-jitter sample.

    The image is resized so that it fits inside a square of side ``scale * crop_size`` with
    ``scale ~ U(min_scale, max_scale)`` (aspect ratio kept, like detectron2's ``ResizeScale``),
    then a uniformly random ``crop_size`` window is kept (like ``FixedSizeCrop``).

    Args:
        height: Source image height H.
        width: Source image width W.
        crop_size: Side S of the square output.
        min_scale: Lower bound of the scale factor (release: 0.8).
        max_scale: Upper bound of the scale factor (release: 1.2).
        flip_prob: Probability of a left-right mirror (release: 0.5).
        rng: Random generator.

    Returns:
        The sampled :class:`ScaleJitterCrop`.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {(height, width)}")
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
    scale = rng.uniform(min_scale, max_scale)
    factor = min(scale * crop_size / height, scale * crop_size / width)
    resized_h = max(1, int(round(height * factor)))
    resized_w = max(1, int(round(width * factor)))
    crop_h = min(crop_size, resized_h)
    crop_w = min(crop_size, resized_w)
    y0 = int(rng.integers(0, resized_h - crop_h + 1))
    x0 = int(rng.integers(0, resized_w - crop_w + 1))
    flip = bool(rng.random() < flip_prob)
    return ScaleJitterCrop(
        height, width, resized_h, resized_w, y0, x0, crop_h, crop_w, crop_size, flip
    )


class ColorAugSSD:
    """SSD-style photometric distortion of an RGB uint8 image (never changes geometry or masks).

    Each step is applied with probability 1/2: brightness shift ``U(-brightness_delta,
    brightness_delta)``, contrast factor ``U(contrast_low, contrast_high)`` (randomly before or
    after the HSV steps), saturation factor ``U(saturation_low, saturation_high)`` and hue shift
    ``U{-hue_delta..hue_delta}`` in OpenCV's 0-179 hue units. Defaults are the SSD recipe's.
    """

    def __init__(
        self,
        *,
        brightness_delta: float = 32.0,
        contrast_low: float = 0.5,
        contrast_high: float = 1.5,
        saturation_low: float = 0.5,
        saturation_high: float = 1.5,
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_low = contrast_low
        self.contrast_high = contrast_high
        self.saturation_low = saturation_low
        self.saturation_high = saturation_high
        self.hue_delta = hue_delta

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Distorts ``image``.

        Args:
            image: uint8 array [H, W, 3], RGB.
            rng: Random generator.

        Returns:
            uint8 array [H, W, 3], RGB, same size.
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"expected a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}"
            )
        if image.size == 0:
            return image
        out = image.astype(np.float32)
        if rng.random() < 0.5:
            out += rng.uniform(-self.brightness_delta, self.brightness_delta)
        contrast_first = rng.random() < 0.5
        if contrast_first:
            out = self._contrast(out, rng)
        out = self._hsv(np.clip(out, 0, 255).astype(np.uint8), rng).astype(np.float32)
        if not contrast_first:
            out = self._contrast(out, rng)
        return np.clip(out, 0, 255).astype(np.uint8)

    def _contrast(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < 0.5:
            image = image * rng.uniform(self.contrast_low, self.contrast_high)
        return image

    def _hsv(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        change_sat = rng.random() < 0.5
        sat = rng.uniform(self.saturation_low, self.saturation_high)
        change_hue = rng.random() < 0.5
        hue = int(rng.integers(-self.hue_delta, self.hue_delta + 1))
        if not (change_sat or change_hue):
            return image
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int32)
        if change_sat:
            hsv[:, :, 1] = np.clip(np.rint(hsv[:, :, 1] * sat), 0, 255)
        if change_hue:
            hsv[:, :, 0] = (hsv[:, :, 0] + hue) % 180
        return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
