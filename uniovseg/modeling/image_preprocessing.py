"""Image preprocessing in pixel space: the release's resize and padding, shared by every path.

The authors' release prepares an image in three steps, and the model's input depends on their
order (measured on the converted release, see the issue "Same masks as the authors' release"):

1. resize the **uint8** image with detectron2's ``ResizeTransform`` (PIL bilinear, which
   antialiases when shrinking, and rounds back to uint8);
2. pad it bottom/right to the square input with grey 128 **in pixel space** (detectron2's
   ``FixedSizeCrop`` default ``pad_value=128``);
3. only then normalise with CLIP's mean/std (the model does this: :meth:`UniOVSeg.normalize`).

Padding with 0 after normalisation (the mean colour) instead moved mask logits by up to ~1.4 on
a real photo; resizing float tensors with torch's antialiased bilinear instead of PIL's uint8
resize moved them further. :func:`resize_and_pad` is the one implementation of steps 1-2: the
model's test preprocessing (predictor, demo, automatic masks, semantic/panoptic and promptable
evaluation, benchmarks) and the stage-2 caption mapper call it; the stage-1 training mapper uses
:func:`resize_uint8` and :func:`pad_bottom_right` inside its crop/flip.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from uniovseg.modeling.image_frame import ImageFrame

__all__ = ["RELEASE_PAD_VALUE", "pad_bottom_right", "resize_and_pad", "resize_uint8"]

# Grey of the padded pixels, 0-255 (detectron2 FixedSizeCrop's default, which the release uses).
RELEASE_PAD_VALUE = 128.0


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes a uint8 image exactly as detectron2's ``ResizeTransform.apply_image`` does.

    Args:
        image: uint8 array [H, W, C] (C = 1 or 3).
        size: (h, w) of the result, each >= 1.

    Returns:
        uint8 array [h, w, C]: PIL bilinear (antialiased when shrinking), rounded to uint8.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(
            f"resize_uint8 takes a uint8 [H, W, 1|3] image, got {image.dtype} {image.shape}"
        )
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"the resized size must be positive, got {size!r}")
    if image.shape[:2] == (height, width):
        return image  # PIL would return an identical copy
    # PIL reads one-channel images as mode "L" and three-channel ones as "RGB", as detectron2.
    pil_image = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    resized = np.asarray(pil_image.resize((width, height), Image.BILINEAR))
    return resized.reshape(height, width, image.shape[2])


def pad_bottom_right(image: np.ndarray, size: tuple[int, int], *, pad_value: float) -> np.ndarray:
    """Places ``image`` top-left on a ``size`` canvas of ``pad_value`` (pixel space, uint8).

    Args:
        image: uint8 array [h, w, C] with h, w <= ``size``.
        size: (S_h, S_w) of the canvas.
        pad_value: Grey level 0-255 of the padding (cast to uint8 as ``np.pad`` does).

    Returns:
        uint8 array [S_h, S_w, C].
    """
    height, width = image.shape[:2]
    if height > size[0] or width > size[1]:
        raise ValueError(f"an image of {height}x{width} does not fit a {size} canvas; resize it")
    canvas = np.full((int(size[0]), int(size[1]), image.shape[2]), pad_value, dtype=np.uint8)
    canvas[:height, :width] = image
    return canvas


def resize_and_pad(image: torch.Tensor, frame: ImageFrame, *, pad_value: float) -> torch.Tensor:
    """A test image, resized into ``frame.valid_size`` and padded to ``frame.padded_size``.

    Args:
        image: uint8 tensor [3, H, W] RGB (any device) with (H, W) the size ``frame`` was
            computed for.
        frame: Its :class:`~uniovseg.modeling.image_frame.ImageFrame`
            (:func:`~uniovseg.modeling.image_frame.inference_frame`).
        pad_value: Grey level 0-255 of the padding (the release: :data:`RELEASE_PAD_VALUE`).

    Returns:
        uint8 tensor [3, S, S] on the CPU, in pixel space (not normalised): the resized image
        top-left, ``pad_value`` elsewhere.
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"expected a uint8 [3, H, W] RGB image tensor, got {image.dtype} "
            f"{tuple(image.shape)}; read images with uniovseg.inference.image_io.read_image"
        )
    # PIL works on the CPU in HWC order; the image is small next to the network's work.
    pixels = image.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    resized = resize_uint8(pixels, frame.valid_size)
    padded = pad_bottom_right(resized, frame.padded_size, pad_value=pad_value)
    return torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))
