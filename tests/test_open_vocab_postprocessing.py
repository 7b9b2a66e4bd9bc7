"""Semantic and panoptic assembly on hand-made masks with known outputs."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.catalog import Metadata

from uniovseg.config import add_uniovseg_config
from uniovseg.modeling.image_frame import inference_frame
from uniovseg.modeling.open_vocab_postprocessing import (
    OpenVocabPostprocessor,
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
    semantic_labels,
    thing_classes_from_metadata,
)

PERSON, CAR, SKY = 0, 1, 2  # classes 0 and 1 are things, 2 is stuff
THINGS = {PERSON, CAR}


def _box_mask(rows: slice, cols: slice, size=(4, 8)) -> torch.Tensor:
    mask = torch.zeros(size)
    mask[rows, cols] = 1.0
    return mask


# ---------------------------------------------------------------------------- semantic
def _semantic_case():
    mask_probs = torch.tensor([[[1.0, 0.5, 0.0]], [[0.0, 0.5, 1.0]]])  # [2, 1, 3]
    class_probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    return mask_probs, class_probs


def test_semantic_inference_hand_computed():
    sem_seg = semantic_inference(*_semantic_case())
    expected = torch.tensor([[[0.7, 0.4, 0.1]], [[0.2, 0.25, 0.3]], [[0.1, 0.35, 0.6]]])
    torch.testing.assert_close(sem_seg, expected)
    assert sem_seg.argmax(0).tolist() == [[0, 0, 2]]


def test_semantic_inference_weighted_by_mask_scores():
    sem_seg = semantic_inference(*_semantic_case(), mask_scores=torch.tensor([1.0, 0.5]))
    expected = torch.tensor([[[0.7, 0.375, 0.05]], [[0.2, 0.175, 0.15]], [[0.1, 0.2, 0.3]]])
    torch.testing.assert_close(sem_seg, expected)
    assert sem_seg.argmax(0).tolist() == [[0, 0, 2]]


def test_semantic_inference_without_masks_is_zero():
    sem_seg = semantic_inference(torch.zeros(0, 5, 7), torch.zeros(0, 4))
    assert sem_seg.shape == (4, 5, 7) and not sem_seg.any()
    assert semantic_labels(torch.zeros(0, 5, 7), torch.zeros(0, 4)).shape == (5, 7)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_semantic_labels_equal_the_argmax(chunk):
    generator = torch.Generator().manual_seed(0)
    mask_probs = torch.rand(6, 9, 11, generator=generator)
    class_probs = torch.rand(6, 10, generator=generator).softmax(-1)
    scores = torch.rand(6, generator=generator)
    expected = semantic_inference(mask_probs, class_probs, mask_scores=scores).argmax(0)
    labels = semantic_labels(mask_probs, class_probs, mask_scores=scores, class_chunk_size=chunk)
    assert torch.equal(labels, expected)


def test_semantic_shape_errors():
    with pytest.raises(ValueError, match="masks"):
        semantic_inference(torch.zeros(2, 3, 3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="mask_scores"):
        semantic_inference(torch.zeros(2, 3, 3), torch.zeros(2, 4), mask_scores=torch.ones(3))


# ---------------------------------------------------------------------------- panoptic
def _panoptic_case():
    """Seven masks on a 4 x 8 image (see the expected maps in the tests)."""
    masks = torch.stack(
        [
            _box_mask(slice(0, 2), slice(0, 2)),  # 0 person A, score 0.9
            _box_mask(slice(2, 4), slice(0, 2)),  # 1 person B, score 0.8
            _box_mask(slice(0, 2), slice(2, 8)),  # 2 sky, upper part, score 0.8
            _box_mask(slice(2, 4), slice(6, 8)),  # 3 sky, lower-right part, score 0.7
            _box_mask(slice(0, 2), slice(0, 3)),  # 4 car hidden under person A + sky: no pixel
            _box_mask(slice(2, 4), slice(2, 4)),  # 5 low score (0.34)
            _box_mask(slice(2, 4), slice(4, 7)),  # 6 car, loses 1 of its 3 columns to mask 3
        ]
    )
    class_probs = torch.tensor(
        [
            [0.9, 0.05, 0.05],
            [0.8, 0.1, 0.1],
            [0.1, 0.1, 0.8],
            [0.2, 0.1, 0.7],
            [0.1, 0.6, 0.3],
            [0.34, 0.33, 0.33],
            [0.05, 0.65, 0.3],
        ]
    )
    return masks, class_probs


def test_panoptic_merges_stuff_keeps_instances_and_drops_masks():
    masks, class_probs = _panoptic_case()
    panoptic_seg, segments = panoptic_inference(
        masks, class_probs, thing_classes=THINGS, score_threshold=0.5, overlap_threshold=0.8
    )
    expected = torch.tensor(
        [
            [1, 1, 3, 3, 3, 3, 3, 3],
            [1, 1, 3, 3, 3, 3, 3, 3],
            [2, 2, 0, 0, 0, 0, 3, 3],
            [2, 2, 0, 0, 0, 0, 3, 3],
        ],
        dtype=torch.int32,
    )
    assert panoptic_seg.dtype == torch.int32
    assert torch.equal(panoptic_seg, expected)
    assert [{k: s[k] for k in ("id", "category_id", "isthing")} for s in segments] == [
        {"id": 1, "category_id": PERSON, "isthing": True},  # two person instances...
        {"id": 2, "category_id": PERSON, "isthing": True},
        {"id": 3, "category_id": SKY, "isthing": False},  # ...one merged sky segment
    ]
    assert [s["score"] for s in segments] == pytest.approx([0.9, 0.8, 0.8])


def test_panoptic_lower_overlap_threshold_keeps_the_partly_hidden_car():
    masks, class_probs = _panoptic_case()
    panoptic_seg, segments = panoptic_inference(
        masks, class_probs, thing_classes=THINGS, score_threshold=0.5, overlap_threshold=0.5
    )
    assert panoptic_seg[2:, 4:6].eq(4).all() and panoptic_seg[2:, 2:4].eq(0).all()
    assert segments[-1]["category_id"] == CAR and segments[-1]["isthing"]
    assert segments[-1]["score"] == pytest.approx(0.65)
    assert len(segments) == 4


def test_panoptic_score_threshold_zero_keeps_the_low_score_mask():
    masks, class_probs = _panoptic_case()
    panoptic_seg, segments = panoptic_inference(
        masks, class_probs, thing_classes=THINGS, score_threshold=0.0, overlap_threshold=0.8
    )
    # Mask 5 now joins the competition and wins its own 2 x 2 block (a person instance).
    assert panoptic_seg[2:, 2:4].eq(4).all()
    assert segments[-1]["category_id"] == PERSON and segments[-1]["score"] == pytest.approx(0.34)


def test_panoptic_stuff_as_things_are_separate_instances():
    masks, class_probs = _panoptic_case()
    panoptic_seg, segments = panoptic_inference(
        masks, class_probs, thing_classes={PERSON, CAR, SKY}, score_threshold=0.5
    )
    assert [s["category_id"] for s in segments] == [PERSON, PERSON, SKY, SKY]
    assert panoptic_seg[0, 2] == 3 and panoptic_seg[2, 7] == 4


def test_panoptic_mask_scores_change_the_winner():
    masks = torch.stack([_box_mask(slice(0, 1), slice(0, 4), (1, 4))] * 2)
    masks[1, 0, :2] = 0.0  # mask 1 covers columns 2-3 only
    class_probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    plain, plain_segments = panoptic_inference(masks, class_probs, thing_classes=())
    assert plain.tolist() == [[1, 1, 1, 1]] and len(plain_segments) == 1
    weighted, segments = panoptic_inference(
        masks, class_probs, thing_classes=(), mask_scores=torch.tensor([0.5, 1.0])
    )
    # 0.9 x 0.5 < 0.8: mask 1 wins columns 2-3; mask 0 keeps 2/4 < 0.8 of its area -> dropped.
    assert weighted.tolist() == [[0, 0, 1, 1]]
    assert segments[0]["category_id"] == 1 and segments[0]["score"] == pytest.approx(0.8)
    both, segments = panoptic_inference(
        masks,
        class_probs,
        thing_classes=(),
        mask_scores=torch.tensor([0.5, 1.0]),
        overlap_threshold=0.5,
    )
    assert both.tolist() == [[1, 1, 2, 2]]
    assert [s["score"] for s in segments] == pytest.approx([0.45, 0.8])


def test_panoptic_void_wins_drop_the_mask():
    masks, class_probs = _panoptic_case()
    void = torch.zeros(len(masks))
    void[0] = 0.95  # person A is "no class"
    panoptic_seg, segments = panoptic_inference(
        masks, class_probs, thing_classes=THINGS, void_probs=void, score_threshold=0.5
    )
    # The hidden car now wins person A's block but keeps 4/6 < 0.8 of its area: dropped too.
    expected = torch.tensor([[0, 0, 2, 2, 2, 2, 2, 2]] * 2 + [[1, 1, 0, 0, 0, 0, 2, 2]] * 2)
    assert torch.equal(panoptic_seg, expected.int())
    assert [(s["id"], s["category_id"]) for s in segments] == [(1, PERSON), (2, SKY)]


def test_panoptic_soft_masks_use_the_half_threshold():
    masks = torch.tensor([[[0.9, 0.6, 0.4, 0.1]]])  # original area: 2 pixels (>= 0.5)
    panoptic_seg, segments = panoptic_inference(masks, torch.tensor([[1.0]]), thing_classes=())
    assert panoptic_seg.tolist() == [[1, 1, 0, 0]] and segments[0]["id"] == 1


def _reference_panoptic(mask_probs, class_probs, thing_classes, mask_scores, threshold, overlap):
    """Mask2Former's assembly written plainly, one mask at a time: the definition the
    vectorised version must match pixel for pixel."""
    scores, labels = class_probs.max(dim=-1)
    scores = scores * mask_scores
    keep = scores > threshold
    scores, labels, masks = scores[keep], labels[keep], mask_probs[keep]
    panoptic = torch.zeros(mask_probs.shape[-2:], dtype=torch.int32)
    if masks.shape[0] == 0:
        return panoptic, []
    winner = (scores[:, None, None] * masks).argmax(dim=0)
    segments, stuff = [], {}
    for k in range(masks.shape[0]):
        label, score = int(labels[k]), float(scores[k])
        won, original = winner == k, masks[k] >= 0.5
        region = won & original
        if int(original.sum()) == 0 or not bool(region.any()):
            continue
        if int(won.sum()) / int(original.sum()) < overlap:
            continue
        if label not in thing_classes and label in stuff:
            stuff[label]["score"] = max(stuff[label]["score"], score)
            panoptic[region] = stuff[label]["id"]
            continue
        segment = {"id": len(segments) + 1, "category_id": label}
        segment.update(isthing=label in thing_classes, score=score)
        panoptic[region] = segment["id"]
        segments.append(segment)
        if label not in thing_classes:
            stuff[label] = segment
    return panoptic, segments


@pytest.mark.parametrize("seed", range(12))
def test_panoptic_matches_the_one_mask_at_a_time_definition(seed):
    g = torch.Generator().manual_seed(seed)
    num_masks = int(torch.randint(1, 14, (), generator=g))
    sharpness = int(torch.randint(1, 4, (), generator=g))
    mask_probs = torch.rand(num_masks, 23, 31, generator=g) ** sharpness
    class_probs = torch.softmax(torch.randn(num_masks, 6, generator=g) * 3, dim=1)
    mask_scores = torch.rand(num_masks, generator=g)
    overlap = float(torch.rand((), generator=g)) * 0.9
    things = {0, 2, 4}
    expected_seg, expected_info = _reference_panoptic(
        mask_probs, class_probs, things, mask_scores, 0.05, overlap
    )
    seg, info = panoptic_inference(
        mask_probs,
        class_probs,
        thing_classes=things,
        mask_scores=mask_scores,
        score_threshold=0.05,
        overlap_threshold=overlap,
    )
    assert torch.equal(seg, expected_seg)
    assert info == expected_info


def test_panoptic_without_masks():
    panoptic_seg, segments = panoptic_inference(
        torch.zeros(0, 3, 5), torch.zeros(0, 4), thing_classes={0}
    )
    assert panoptic_seg.shape == (3, 5) and panoptic_seg.dtype == torch.int32
    assert not panoptic_seg.any() and segments == []
    masks, class_probs = _panoptic_case()
    panoptic_seg, segments = panoptic_inference(
        masks, class_probs, thing_classes=THINGS, score_threshold=0.99
    )
    assert not panoptic_seg.any() and segments == []


def test_panoptic_rejects_bad_thing_classes():
    masks, class_probs = _panoptic_case()
    with pytest.raises(ValueError, match="thing_classes"):
        panoptic_inference(masks, class_probs, thing_classes={3})


# ---------------------------------------------------------------------------- resizing, config
def test_resize_crops_the_padding_before_resizing_when_the_image_does_not_fill_the_input():
    """shortest_edge geometry (the valid region's longest side < the input side): detectron2's
    sem_seg_postprocess, crop the valid region, then resize it."""
    logits = torch.full((2, 8, 8), -10.0)
    logits[:, :6, :4] = torch.arange(24.0).reshape(6, 4)  # the valid 6 x 4 input region
    same = resize_mask_logits(logits, valid_size=(6, 4), padded_size=(8, 8), output_size=(6, 4))
    torch.testing.assert_close(same, logits[:, :6, :4])
    # Stride-2 logits of the padded input, upsampled back to it, then cropped and resized.
    low = logits[:, ::2, ::2]
    out = resize_mask_logits(low, valid_size=(6, 4), padded_size=(8, 8), output_size=(12, 8))
    assert out.shape == (2, 12, 8)
    chunked = resize_mask_logits(
        low, valid_size=(6, 4), padded_size=(8, 8), output_size=(12, 8), chunk_size=1
    )
    torch.testing.assert_close(out, chunked)
    constant = resize_mask_logits(torch.full((1, 4, 4), 3.0), valid_size=(3, 4), output_size=(9, 5))
    torch.testing.assert_close(constant, torch.full((1, 9, 5), 3.0))


@pytest.mark.parametrize(
    "size",
    [
        (480, 640),
        (640, 480),
        (683, 1024),
        (37, 1025),
        (389, 1027),
        (1024, 1500),
        (2, 2000),
        (1024, 1024),
        (3000, 4000),
        (50, 90),
        (7, 3),
    ],
)
@pytest.mark.parametrize("side", [1024, 64])
def test_resize_in_the_release_geometry_is_its_sem_seg_postprocess_to_the_bit(size, side):
    """Longest side to the square input: the release upsamples the stride-4 logits to the
    input, scales that square to the original's longest side and crops (H0, W0). Equal up to
    float rounding: bit for bit with several threads, 1 ulp apart with one (PyTorch's CPU
    resampling splits the work differently)."""
    height, width = size
    frame = inference_frame(size, side)
    low = torch.randn(3, side // 4, side // 4)
    square = torch.nn.functional.interpolate(
        low[None], size=(side, side), mode="bilinear", align_corners=False
    )
    longest = max(size)
    expected = torch.nn.functional.interpolate(
        square, size=(longest, longest), mode="bilinear", align_corners=False
    )[0, :, :height, :width]
    out = resize_mask_logits(
        low, valid_size=frame.valid_size, padded_size=frame.padded_size, output_size=size
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    chunked = resize_mask_logits(
        low,
        valid_size=frame.valid_size,
        padded_size=frame.padded_size,
        output_size=size,
        chunk_size=2,
    )
    torch.testing.assert_close(chunked, expected, rtol=0, atol=1e-5)


def test_resize_rejects_an_input_larger_than_the_padding():
    with pytest.raises(ValueError, match="does not fit"):
        resize_mask_logits(
            torch.zeros(1, 4, 4), valid_size=(9, 4), padded_size=(8, 8), output_size=(2, 2)
        )


def test_thing_classes_from_metadata():
    panoptic = Metadata(name="x").set(thing_dataset_id_to_contiguous_id={1: 0, 3: 2})
    assert thing_classes_from_metadata(panoptic) == {0, 2}
    assert thing_classes_from_metadata(Metadata(name="semantic")) == set()


def test_postprocessor_from_config():
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    cfg.MODEL.UNIOVSEG.OPEN_VOCAB.OBJECT_MASK_THRESHOLD = 0.5
    cfg.MODEL.UNIOVSEG.OPEN_VOCAB.OVERLAP_THRESHOLD = 0.5
    cfg.MODEL.UNIOVSEG.OPEN_VOCAB.SEMANTIC_USE_MASK_SCORES = True
    post = OpenVocabPostprocessor(cfg)
    masks, class_probs = _panoptic_case()
    _, segments = post.panoptic(masks, class_probs, thing_classes=THINGS)
    assert len(segments) == 4  # the car survives at overlap 0.5
    mask_probs, probs = _semantic_case()
    scores = torch.tensor([1.0, 0.5])
    torch.testing.assert_close(
        post.semantic(mask_probs, probs, scores),
        semantic_inference(mask_probs, probs, mask_scores=scores),
    )
