"""The frames of a test image, named once.

Three frames describe every image the model sees at test time (the release's geometry):

* original: the image as given, ``(H0, W0)``; outputs are returned at this size;
* valid: the image resized by the test resize (:func:`inference_frame`), ``(h, w)``, in the top-left
  corner of the padded input;
* padded: the square network input ``(S, S)`` (``MODEL.UNIOVSEG.TEST.INPUT_SIZE``); the rest of
  it is bottom/right padding.

Prompts and low-resolution mask logits live in the padded frame (input pixels); masks handed to
users live in the original frame. :class:`ImageFrame` names the three sizes and
:func:`inference_frame` is the one place that computes them for the test resize.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["TEST_RESIZE_MODES", "ImageFrame", "inference_frame", "resize_shortest_edge_shape"]

# MODEL.UNIOVSEG.TEST.RESIZE_MODE values.
TEST_RESIZE_MODES = ("longest_side", "shortest_edge")


class ImageFrame(NamedTuple):
    """The sizes of one test image, each (height, width) in pixels.

    Attributes:
        original_size: (H0, W0) of the image as given.
        valid_size: (h, w) of the resized image inside the padded input (top-left).
        padded_size: (S, S) of the padded network input.
    """

    original_size: tuple[int, int]
    valid_size: tuple[int, int]
    padded_size: tuple[int, int]


def inference_frame(
    original_size: tuple[int, int],
    input_size: int,
    *,
    resize_mode: str = "longest_side",
    min_size: int = 800,
    max_size: int = 1333,
) -> ImageFrame:
    """The frame of an image of ``original_size`` under the test resize.

    Args:
        original_size: (H0, W0), positive.
        input_size: Side S of the square padded input.
        resize_mode: ``"longest_side"``: the longest side becomes S (the release's geometry:
            detectron2's ``ResizeShortestEdge(S, max_size=S)``); ``"shortest_edge"``:
            ``ResizeShortestEdge(min_size, max_size)`` (shortest side to ``min_size``, longest
            capped at ``max_size``, which must be <= S). Both round as detectron2 does
            (:func:`resize_shortest_edge_shape`).
        min_size, max_size: The ``"shortest_edge"`` sizes (``INPUT.MIN_SIZE_TEST`` and
            ``INPUT.MAX_SIZE_TEST``).

    Returns:
        An :class:`ImageFrame`; ``valid_size`` fits inside ``(S, S)``.
    """
    height, width = int(original_size[0]), int(original_size[1])
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {original_size!r}")
    if resize_mode == "longest_side":
        # The release's demo: ResizeShortestEdge(S, max_size=S), i.e. the longest side becomes S.
        short_side, long_cap = input_size, input_size
    elif resize_mode == "shortest_edge":
        if max_size > input_size:
            raise ValueError(
                f"INPUT.MAX_SIZE_TEST={max_size} exceeds MODEL.UNIOVSEG.TEST.INPUT_SIZE="
                f"{input_size}: resized images would not fit the padded input"
            )
        short_side, long_cap = min_size, max_size
    else:
        raise ValueError(
            f"MODEL.UNIOVSEG.TEST.RESIZE_MODE={resize_mode!r}: use one of {TEST_RESIZE_MODES}"
        )
    valid_h, valid_w = resize_shortest_edge_shape(
        height, width, short_side=short_side, max_size=long_cap
    )
    # detectron2 can round an extreme aspect ratio (1 x 5000) down to a 0-pixel side, which no
    # resize accepts; one pixel is the least an image can have. min(): never past the input.
    valid = (min(input_size, max(1, valid_h)), min(input_size, max(1, valid_w)))
    return ImageFrame((height, width), valid, (input_size, input_size))


def resize_shortest_edge_shape(
    height: int, width: int, *, short_side: int, max_size: int
) -> tuple[int, int]:
    """(h, w) after detectron2's ``ResizeShortestEdge`` (``get_output_shape``), float for float.

    The shortest side becomes ``short_side`` unless the longest would then pass ``max_size``, in
    which case the longest side becomes ``max_size``; each side is rounded half up
    (``int(x + 0.5)``, not Python's half-to-even ``round``). The release resizes test images with
    this rule, so matching its arithmetic (same float operations in the same order) gives the
    same valid region, pixel for pixel. Written here rather than imported so that this module
    (and prompt parsing) needs neither torch nor detectron2.

    Returns:
        (h, w); a side may be 0 for extreme aspect ratios (the caller clamps it).
    """
    size = short_side * 1.0
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)
