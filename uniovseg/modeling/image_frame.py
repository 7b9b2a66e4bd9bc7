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

__all__ = ["TEST_RESIZE_MODES", "ImageFrame", "inference_frame"]

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
        resize_mode: ``"longest_side"``: the longest side becomes S (the release's geometry);
            ``"shortest_edge"``: detectron2's ``ResizeShortestEdge`` (shortest side to
            ``min_size``, longest capped at ``max_size``, which must be <= S).
        min_size, max_size: The ``"shortest_edge"`` sizes (``INPUT.MIN_SIZE_TEST`` and
            ``INPUT.MAX_SIZE_TEST``).

    Returns:
        An :class:`ImageFrame`; ``valid_size`` fits inside ``(S, S)``.
    """
    height, width = int(original_size[0]), int(original_size[1])
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {original_size!r}")
    if resize_mode == "longest_side":
        scale = input_size / max(height, width)
        # min(): a rounding up past S (an extreme aspect ratio) would not fit the input.
        valid = (
            min(input_size, max(1, round(height * scale))),
            min(input_size, max(1, round(width * scale))),
        )
    elif resize_mode == "shortest_edge":
        if max_size > input_size:
            raise ValueError(
                f"INPUT.MAX_SIZE_TEST={max_size} exceeds MODEL.UNIOVSEG.TEST.INPUT_SIZE="
                f"{input_size}: resized images would not fit the padded input"
            )
        from detectron2.data.transforms import ResizeShortestEdge  # torch: only when needed

        valid = ResizeShortestEdge.get_output_shape(height, width, min_size, max_size)
    else:
        raise ValueError(
            f"MODEL.UNIOVSEG.TEST.RESIZE_MODE={resize_mode!r}: use one of {TEST_RESIZE_MODES}"
        )
    return ImageFrame((height, width), (int(valid[0]), int(valid[1])), (input_size, input_size))
