"""Reads the image of a training dataset dict, from its file or from bytes read out of a shard.

Dataset dicts of extracted folders carry ``file_name``; those of tar shards
(:mod:`uniovseg.data.datasets.shards`) carry the encoded file as ``image_bytes`` (and a
``file_name`` that only names the sample). Both decode the same way as detectron2's
``read_image``: EXIF orientation applied, then converted to the requested format.
"""

from __future__ import annotations

import io

import numpy as np
from detectron2.data import detection_utils
from PIL import Image, ImageOps

__all__ = ["read_dataset_image"]


def read_dataset_image(dataset_dict: dict, *, format: str = "RGB") -> np.ndarray:
    """The image of ``dataset_dict`` as an HWC uint8 array.

    Args:
        dataset_dict: With ``image_bytes`` (an encoded JPEG/PNG/WebP) or ``file_name``.
        format: A PIL mode or ``"BGR"`` (see ``detectron2.data.detection_utils.read_image``).

    Raises:
        OSError, ValueError, SyntaxError: The image cannot be read or decoded (PIL's errors,
            as for a file).
    """
    data = dataset_dict.get("image_bytes")
    if data is None:
        return detection_utils.read_image(dataset_dict["file_name"], format=format)
    with Image.open(io.BytesIO(data)) as image:
        return detection_utils.convert_PIL_to_numpy(ImageOps.exif_transpose(image), format)
