"""Reading user images for inference: any file Pillow opens becomes an RGB uint8 array.

What real photo folders contain, and what happens to it here:

* grayscale, bilevel, palette, CMYK, YCbCr: converted to RGB by Pillow;
* an alpha channel (RGBA, LA, palette with transparency): composited over a background colour
  (white by default), since the colour under fully transparent pixels is arbitrary;
* 16-bit, 32-bit integer and float images: linearly stretched from their own minimum and maximum
  to 0-255 (16-bit files often use only part of their range, e.g. 12-bit sensors or depth maps);
* EXIF orientation: applied, so the array is upright as image viewers show it;
* huge images: decoded at a reduced size when the format allows it (JPEG draft mode) and
  downscaled so that the longest side is at most ``max_side``;
* images beyond Pillow's decompression-bomb limit, unreadable, truncated or empty files, and
  images smaller than ``min_side``: :class:`ImageReadError` with the reason.

Nothing here imports torch, so reading and checking inputs stays cheap.
"""

from __future__ import annotations

import glob
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageInput",
    "ImageReadError",
    "LoadedImage",
    "collect_image_paths",
    "read_image",
    "read_image_size",
    "to_rgb_uint8",
]

logger = logging.getLogger(__name__)

# Extensions collected from directories (case-insensitive). Files named explicitly or matched by
# a glob are read whatever their extension.
IMAGE_EXTENSIONS = (
    ".bmp",
    ".gif",
    ".jfif",
    ".jpeg",
    ".jpg",
    ".pbm",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)
_GLOB_CHARACTERS = set("*?[")
# EXIF tag 0x0112 (Orientation); values 5-8 swap width and height.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_HIGH_DEPTH_PREFIXES = ("I", "F")  # "I", "I;16", "I;16B", "I;16L", "F"
# Decoding may run this much larger than the target before the final resize (JPEG draft mode
# only picks scales 1/1, 1/2, 1/4, 1/8; the final resize then antialiases the rest).
_DRAFT_MARGIN = 2


class ImageReadError(ValueError):
    """A file cannot be used as an input image; the message says why (for skip reports)."""


@dataclass
class LoadedImage:
    """An image ready for the model.

    Attributes:
        image: uint8 [H, W, 3] RGB, C-contiguous, upright (EXIF orientation applied).
        path: The file it came from.
        original_size: (H0, W0) of the upright image before any downscaling.
        scale: ``H / H0`` (= ``W / W0`` up to rounding); 1.0 unless the image was downscaled.
        notes: Human-readable conversions applied (mode conversion, orientation, downscaling).
    """

    image: np.ndarray
    path: str
    original_size: tuple[int, int]
    scale: float = 1.0
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of ``image``."""
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass(frozen=True)
class ImageInput:
    """One image file found by :func:`collect_image_paths`.

    Attributes:
        path: The file path.
        name: A unique output name for it: the path relative to the directory it was found in
            (directories), or its file name (files, globs), without extension, with ``_2``,
            ``_3``... appended on collisions.
    """

    path: str
    name: str


def to_rgb_uint8(
    array: np.ndarray, *, alpha_background: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """Any image array -> uint8 [H, W, 3] RGB.

    Args:
        array: [H, W] or [H, W, C] with C in 1 (gray), 2 (gray + alpha), 3 (RGB), 4 (RGBA), of
            dtype bool, any integer or float. uint8 colour values are kept; other dtypes are
            stretched linearly from the colour channels' own min..max to 0..255 (a constant
            image becomes 0). Alpha is read as 0..255 for uint8, 0..dtype max for other integers
            and 0..1 for floats.
        alpha_background: RGB colour that transparent pixels are composited over.

    Returns:
        A new C-contiguous uint8 [H, W, 3] array.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(
            f"expected an image array [H, W] or [H, W, C] with C in 1..4, got shape {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(f"the image is empty (shape {array.shape})")
    channels = array.shape[2]
    has_alpha = channels in (2, 4)
    colour = array[:, :, : channels - 1] if has_alpha else array
    alpha = _alpha_to_unit(array[:, :, -1]) if has_alpha else None
    colour = _colour_to_uint8(colour)
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    if alpha is not None:
        background = np.asarray(alpha_background, dtype=np.float32).reshape(1, 1, 3)
        blended = colour.astype(np.float32) * alpha[:, :, None] + background * (
            1.0 - alpha[:, :, None]
        )
        colour = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return np.array(colour, dtype=np.uint8, order="C")


def _colour_to_uint8(colour: np.ndarray) -> np.ndarray:
    if colour.dtype == np.uint8:
        return colour
    if colour.dtype == np.bool_:
        return colour.astype(np.uint8) * 255
    if not (np.issubdtype(colour.dtype, np.integer) or np.issubdtype(colour.dtype, np.floating)):
        raise ImageReadError(f"unsupported image dtype {colour.dtype}")
    values = colour.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(colour.shape, dtype=np.uint8)
    low, high = values[finite].min(), values[finite].max()
    values = np.where(finite, values, low)
    if high <= low:
        return np.zeros(colour.shape, dtype=np.uint8)
    return np.clip(np.rint((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def _alpha_to_unit(alpha: np.ndarray) -> np.ndarray:
    if alpha.dtype == np.bool_:
        return alpha.astype(np.float32)
    if np.issubdtype(alpha.dtype, np.integer):
        return alpha.astype(np.float32) / float(np.iinfo(alpha.dtype).max)
    return np.clip(np.nan_to_num(alpha.astype(np.float32)), 0.0, 1.0)


def read_image_size(path: str) -> tuple[int, int]:
    """(H, W) of an image file as :func:`read_image` would see it before downscaling, from its
    header only (EXIF orientation included); cheap enough to check prompts before any work.

    Raises:
        ImageReadError: the file cannot be opened as an image.
    """
    with _open(path) as im:
        width, height = im.size
        if _orientation(im) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return int(height), int(width)


def read_image(
    path: str,
    *,
    max_side: int | None = None,
    min_side: int = 1,
    alpha_background: tuple[int, int, int] = (255, 255, 255),
) -> LoadedImage:
    """Reads an image file as upright RGB uint8 (see the module docstring for what is handled).

    Args:
        path: Any format Pillow opens (the first frame of animations and multi-page files).
        max_side: Downscale (antialiased) so that the longest side is at most this; None: never.
        min_side: Reject images whose shorter side is below this many pixels.
        alpha_background: RGB colour that transparent pixels are composited over.

    Returns:
        A :class:`LoadedImage`.

    Raises:
        ImageReadError: unreadable, truncated, too large for Pillow's decompression-bomb guard,
            unsupported mode, or smaller than ``min_side``; the message is the reason.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1 or None, got {max_side}")
    notes: list[str] = []
    with _open(path) as im:
        orientation = _orientation(im)
        width, height = im.size
        if orientation in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
        original_size = (int(height), int(width))
        if min(original_size) < min_side:
            raise ImageReadError(
                f"too small: {width}x{height} px (each side must be at least {min_side} px)"
            )
        if max_side is not None and max(original_size) > _DRAFT_MARGIN * max_side:
            # JPEG decodes at 1/2, 1/4 or 1/8 directly: big photos never fully materialise.
            factor = _DRAFT_MARGIN * max_side / max(original_size)
            raw_w, raw_h = im.size
            im.draft(None, (max(1, int(raw_w * factor)), max(1, int(raw_h * factor))))
        mode = im.mode
        try:
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageReadError(f"truncated or corrupt image data ({e})") from e
        if orientation not in (None, 1):
            try:
                im = ImageOps.exif_transpose(im)
                notes.append(f"EXIF orientation {orientation} applied")
            except (OSError, ValueError, KeyError, TypeError) as e:
                notes.append(f"EXIF orientation ignored ({e})")
        array = _pil_to_rgb(im, alpha_background, notes, mode)
    if max_side is not None and max(array.shape[:2]) > max_side:
        array = _downscale(array, max_side)
        notes.append(
            f"downscaled from {original_size[1]}x{original_size[0]} to "
            f"{array.shape[1]}x{array.shape[0]}"
        )
    scale = array.shape[0] / original_size[0]
    return LoadedImage(
        image=array, path=str(path), original_size=original_size, scale=scale, notes=notes
    )


def _open(path: str) -> Image.Image:
    if not os.path.isfile(path):
        raise ImageReadError("no such file" if not os.path.exists(path) else "not a file")
    if os.path.getsize(path) == 0:
        raise ImageReadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Large images between Pillow's warning and error limits are fine: we downscale.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"too large for Pillow's decompression-bomb guard ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageReadError("not an image Pillow can identify (unknown or corrupt format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"truncated or corrupt file ({e})") from e


def _orientation(im: Image.Image) -> int | None:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        return None  # a broken EXIF block: read the pixels as stored
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _pil_to_rgb(
    im: Image.Image, alpha_background: tuple[int, int, int], notes: list[str], mode: str
) -> np.ndarray:
    if im.mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if im.mode.startswith(_HIGH_DEPTH_PREFIXES):
        notes.append(f"stretched {mode} (high bit depth) to 8-bit RGB")
        return to_rgb_uint8(np.asarray(im))
    if im.mode in _ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        notes.append(f"composited {mode} (alpha) over {tuple(alpha_background)}")
        return to_rgb_uint8(np.asarray(im.convert("RGBA")), alpha_background=alpha_background)
    try:
        converted = im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageReadError(f"unsupported image mode {im.mode!r} ({e})") from e
    notes.append(f"converted {mode} to RGB")
    return np.array(converted, dtype=np.uint8)


def _downscale(array: np.ndarray, max_side: int) -> np.ndarray:
    height, width = array.shape[:2]
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(array).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.array(resized, dtype=np.uint8)


def collect_image_paths(
    inputs: Sequence[str], *, recursive: bool = False
) -> tuple[list[ImageInput], list[tuple[str, str]]]:
    """Expands files, directories and glob patterns into a list of image files.

    Args:
        inputs: File paths (read whatever their extension), directories (files with an
            extension of :data:`IMAGE_EXTENSIONS`, sorted; subdirectories too with
            ``recursive``) and glob patterns (``*``, ``?``, ``[...]``; ``**`` with
            ``recursive``). ``~`` is expanded.
        recursive: Descend into subdirectories of directories, and let ``**`` match any depth.

    Returns:
        (images in input order without duplicates, problems as ``(input, reason)`` for inputs
        that gave nothing: missing paths, empty directories, patterns without a match).
    """
    found: list[tuple[str, str]] = []  # (path, output name without de-duplication)
    problems: list[tuple[str, str]] = []
    for raw in inputs:
        item = os.path.expanduser(raw)
        if os.path.isdir(item):
            files = _images_in_directory(item, recursive)
            if not files:
                where = "it or its subdirectories" if recursive else "it (use --recursive?)"
                problems.append((raw, f"directory with no image file in {where}"))
            found.extend((f, os.path.splitext(os.path.relpath(f, item))[0]) for f in files)
        elif any(c in _GLOB_CHARACTERS for c in item):
            matches = sorted(m for m in glob.glob(item, recursive=recursive) if os.path.isfile(m))
            if not matches:
                problems.append((raw, "glob pattern matched no file"))
            found.extend((m, os.path.splitext(os.path.basename(m))[0]) for m in matches)
        elif os.path.isfile(item):
            found.append((item, os.path.splitext(os.path.basename(item))[0]))
        else:
            problems.append((raw, "no such file or directory"))

    images: list[ImageInput] = []
    seen_paths: set[str] = set()
    used_names: set[str] = set()
    for path, name in found:
        real = os.path.realpath(path)
        if real in seen_paths:
            continue
        seen_paths.add(real)
        unique, n = name, 1
        while unique in used_names:
            n += 1
            unique = f"{name}_{n}"
        used_names.add(unique)
        images.append(ImageInput(path=path, name=unique))
    return images, problems


def _images_in_directory(directory: str, recursive: bool) -> list[str]:
    files = []
    if recursive:
        for root, dirs, names in os.walk(directory):
            dirs.sort()
            files.extend(os.path.join(root, n) for n in names)
    else:
        files = [os.path.join(directory, n) for n in os.listdir(directory)]
    return sorted(f for f in files if os.path.isfile(f) and f.lower().endswith(IMAGE_EXTENSIONS))
