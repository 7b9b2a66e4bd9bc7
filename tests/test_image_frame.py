"""The one test resize (uniovseg.modeling.image_frame.inference_frame), shared by the model, the
promptable-evaluation mapper and the predictor's prompt transform."""

import pytest

from uniovseg.data.promptable_eval_mapper import PromptableEvalMapper
from uniovseg.inference.prompts import ResizeLongestSide
from uniovseg.modeling.image_frame import ImageFrame, inference_frame


def test_longest_side_becomes_the_input_size():
    frame = inference_frame((683, 512), 1024)
    assert frame == ImageFrame((683, 512), (1024, 768), (1024, 1024))
    assert inference_frame((30, 60), 64).valid_size == (32, 64)  # upscaled
    assert inference_frame((1, 5000), 64).valid_size == (1, 64)  # never below one pixel
    with pytest.raises(AttributeError):
        frame.valid_size = (1, 1)  # frozen


def test_shortest_edge_follows_detectron2_and_must_fit():
    assert inference_frame((48, 64), 64, resize_mode="shortest_edge", min_size=32, max_size=64) == (
        ImageFrame((48, 64), (32, 43), (64, 64))
    )
    with pytest.raises(ValueError, match="MAX_SIZE_TEST"):
        inference_frame((48, 64), 64, resize_mode="shortest_edge", max_size=100)
    with pytest.raises(ValueError, match="RESIZE_MODE"):
        inference_frame((48, 64), 64, resize_mode="crop")
    with pytest.raises(ValueError, match="positive"):
        inference_frame((0, 64), 64)


@pytest.mark.parametrize("size", [(683, 512), (3, 1000), (511, 513), (100, 100)])
def test_every_user_of_the_test_resize_agrees(size):
    mapper = PromptableEvalMapper(input_size=1024)
    expected = inference_frame(size, 1024).valid_size
    assert mapper.frame(*size).valid_size == expected
    assert ResizeLongestSide(1024).input_size(size) == expected
