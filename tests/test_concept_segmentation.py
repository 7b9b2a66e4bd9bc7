"""Concept prompts (predictor.segment_concepts): phrase parsing, the calibrated rejection on
hand-made embeddings with known answers, per-phrase de-duplication, the API on the tiny config
(random weights) with one encoding per image for many queries, the demo task, and the metrics
of tools/eval_concepts.py on hand-made cases."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from uniovseg.evaluation.concept_metrics import (
    ConceptEvaluation,
    average_precision,
    greedy_matches,
)
from uniovseg.inference import UniOVSegPredictor
from uniovseg.inference.predictions import ConceptPrediction
from uniovseg.modeling.automatic_mask_engine import AutomaticMaskResult
from uniovseg.modeling.concept_segmentation import (
    ConceptSegmenter,
    background_exclusions,
    concept_probs,
    parse_concepts,
)
from uniovseg.modeling.text_classifier import TextClassifier

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(ROOT / "configs" / "tiny" / "stage1_tiny.yaml")
BACKGROUND = "sky; grass; road"
# Random weights: open the mask filters so that masks survive; a small background and one
# template keep the text side fast.
OPTS = [
    "MODEL.UNIOVSEG.AUTOMATIC.PRED_IOU_THRESH", "0.0",
    "MODEL.UNIOVSEG.AUTOMATIC.STABILITY_SCORE_THRESH", "0.0",
    "MODEL.UNIOVSEG.AUTOMATIC.POINTS_PER_SIDE", "4",
    "MODEL.UNIOVSEG.OPEN_VOCAB.TEMPLATES", "photo",
    "MODEL.UNIOVSEG.CONCEPTS.BACKGROUND_VOCABULARY", BACKGROUND,
]  # fmt: skip
H, W = 40, 56


# ---------------------------------------------------------------------------- parsing
def test_phrases_are_split_on_semicolons_with_synonyms_on_commas():
    assert parse_concepts("red car; dog") == ["red car", "dog"]
    assert parse_concepts("  red   car ;dog, puppy;") == ["red car", "dog, puppy"]
    assert parse_concepts(["red car", "dog"]) == ["red car", "dog"]
    # A string is always phrases: a packaged vocabulary name is just a phrase here.
    assert parse_concepts("ade20k_150") == ["ade20k_150"]


@pytest.mark.parametrize("query", ["", "   ", ";", " ; ;", " , ; ", "\t\n", [], [" ", ""]])
def test_an_empty_query_is_refused_with_an_example(query):
    with pytest.raises(ValueError, match="red car; dog"):
        parse_concepts(query)


@pytest.mark.parametrize("query", [None, 3, b"dog"])
def test_a_query_of_the_wrong_type_is_refused(query):
    with pytest.raises(ValueError, match="concepts"):
        parse_concepts(query)


def test_invisible_and_clashing_phrases_are_refused():
    with pytest.raises(ValueError, match="invisible"):
        parse_concepts("dog; \u200b")
    with pytest.raises(ValueError, match="one class only"):
        parse_concepts("dog; cat, dog")


# ---------------------------------------------------------------------------- rejection
def test_a_phrase_leaves_out_background_entries_that_name_it():
    excluded = background_exclusions(["dog, puppy", "red car"], ["Puppy", "car", "sky"])
    assert excluded.tolist() == [[True, False, False], [False, False, False]]


def test_concept_probs_are_each_phrase_against_its_own_background():
    phrase_logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    background_logits = torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    excluded = torch.tensor([[False, False], [False, True]])
    probs = concept_probs(phrase_logits, background_logits, excluded)
    e = math.e
    expected = [
        [e**2 / (e**2 + 1 + e), 1 / (1 + 1)],  # phrase 1 ignores background entry 1
        [1 / (1 + e**3 + 1), 1 / (1 + e**3)],
    ]
    assert np.allclose(probs.numpy(), expected)
    # Nothing left to compete with: probability 1.
    alone = concept_probs(phrase_logits, background_logits, torch.ones(2, 2, dtype=torch.bool))
    assert alone.tolist() == [[1.0, 1.0], [1.0, 1.0]]


class _TableEncoder:
    """A text encoder with known embeddings: the name inside the prompt picks a unit vector."""

    AXES = {"dog": 0, "cat": 1, "sky": 2, "grass": 3}

    def __init__(self):
        self.texts: list[str] = []

    def encode_text(self, texts, *, normalize=True):
        self.texts += texts
        out = torch.zeros(len(texts), 4)
        for i, text in enumerate(texts):
            out[i, self.AXES[text]] = 1.0
        return out

    @property
    def logit_scale(self):
        return torch.tensor(10.0)


def _result(masks: np.ndarray) -> AutomaticMaskResult:
    k = len(masks)
    masks = torch.from_numpy(masks)
    return AutomaticMaskResult(
        masks=masks,
        iou_scores=torch.ones(k),
        stability_scores=torch.ones(k),
        point_coords=torch.zeros(k, 2),
        boxes=torch.zeros(k, 4),
        mask_logits_lowres=torch.zeros(k, 4, 4),
        point_indices=torch.arange(k),
        granularity_indices=torch.zeros(k, dtype=torch.long),
        original_size=tuple(masks.shape[1:]),
    )


def _block(top, left, size=4, shape=(12, 12)):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_masks_matching_no_phrase_are_rejected_and_absent_phrases_say_none_found():
    classifier = TextClassifier(text_encoder=_TableEncoder(), templates="name")
    segmenter = ConceptSegmenter(background_vocabulary="sky; grass", score_threshold=0.5)
    regions = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],  # a dog
            [0.0, 0.0, 1.0, 0.0],  # sky: background
            [0.6, 0.0, 0.8, 0.0],  # more sky than dog
            [0.0, 0.0, 0.0, 1.0],  # grass
        ]
    )
    probs = segmenter.phrase_probs(regions, ["dog", "cat"], classifier)
    # dog on mask 0: e^10 / (e^10 + 2 e^0) (its cosines with sky and grass are 0).
    assert probs[0, 0].item() == pytest.approx(math.exp(10) / (math.exp(10) + 2))
    masks = np.stack([_block(0, 0), _block(0, 6), _block(6, 0), _block(6, 6)])
    dog, cat = segmenter.select(_result(masks), probs)
    assert dog.mask_indices.tolist() == [0]
    assert cat.mask_indices.numel() == 0  # "none found"
    # Without the calibrated threshold every mask would be some phrase's.
    everything = segmenter.select(_result(masks), probs, score_threshold=0.0)
    assert everything[0].mask_indices.tolist()[0] == 0 and len(everything[0].mask_indices) == 4
    # The answer for a phrase does not depend on the other phrases of the query.
    alone = segmenter.phrase_probs(regions, ["dog"], classifier)
    assert torch.allclose(alone[:, 0], probs[:, 0])


def test_a_phrase_in_the_background_is_not_its_own_competitor():
    classifier = TextClassifier(text_encoder=_TableEncoder(), templates="name")
    segmenter = ConceptSegmenter(background_vocabulary="sky; dog")
    probs = segmenter.phrase_probs(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), ["dog"], classifier)
    assert probs.item() == pytest.approx(math.exp(10) / (math.exp(10) + 1))
    with pytest.warns(UserWarning, match="nothing is rejected"):
        ConceptSegmenter(background_vocabulary="dog;").phrase_probs(
            torch.eye(4)[:1], ["dog"], classifier
        )


def test_overlapping_masks_of_one_phrase_become_one_instance():
    segmenter = ConceptSegmenter(background_vocabulary="sky;", score_threshold=0.3)
    whole = _block(0, 0, size=8)
    part = _block(0, 0, size=4)  # inside `whole`: removed by the containment rule
    shifted = _block(1, 1, size=8)  # IoU 49/79 with `whole`: removed by the IoU rule
    other = _block(8, 8, size=4)
    masks = np.stack([part, whole, shifted, other])
    probs = torch.tensor([[0.6], [0.9], [0.8], [0.4]])
    (found,) = segmenter.select(_result(masks), probs)
    assert found.mask_indices.tolist() == [1, 3]
    assert found.scores.tolist() == pytest.approx([0.9, 0.4])
    # What a threshold keeps is a prefix of the ranking at threshold 0 (evaluation uses it).
    (all_kept,) = segmenter.select(_result(masks), probs, score_threshold=0.0)
    assert all_kept.mask_indices.tolist() == [1, 3]


def test_bad_settings_fail_when_the_segmenter_is_built():
    with pytest.raises(ValueError, match="neither a packaged vocabulary"):
        ConceptSegmenter(background_vocabulary="no_such_vocabulary")
    with pytest.raises(ValueError, match="SCORE_THRESH"):
        ConceptSegmenter(background_vocabulary="sky;", score_threshold=-0.1)


# ---------------------------------------------------------------------------- predictor
@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return UniOVSegPredictor.from_config(TINY_CONFIG, opts=OPTS, device="cpu")


@pytest.fixture(scope="module")
def image():
    yy, xx = np.mgrid[0:H, 0:W]
    picture = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 90)], -1)
    picture[(yy - 20) ** 2 + (xx - 20) ** 2 < 10**2] = (200, 30, 30)
    return picture.astype(np.uint8)


def test_config_keys_reach_the_segmenter(predictor):
    segmenter = predictor.model.open_vocab.concepts
    assert segmenter.background == ["sky", "grass", "road"]
    assert segmenter.score_threshold == 0.5
    assert (segmenter.nms_iou_threshold, segmenter.nms_containment_threshold) == (0.5, 0.7)


def test_segment_concepts_returns_instances_per_phrase_at_the_original_size(predictor, image):
    with predictor.session(image):
        out = predictor.segment_concepts("red car; dog", score_threshold=0.0)
    assert isinstance(out, ConceptPrediction)
    assert [c.phrase for c in out] == ["red car", "dog"] and len(out) == 2
    assert out.image_size == (H, W) and out.background == ["sky", "grass", "road"]
    assert out["DOG"] is out[1]
    for concept in out:
        assert concept.found and concept.instances
        scores = concept.scores
        assert np.all(np.diff(scores) <= 0) and np.all((scores >= 0) & (scores <= 1))
        for instance in concept.instances:
            assert instance.mask.shape == (H, W) and instance.mask.dtype == bool
            assert instance.box.shape == (4,)
            rows, cols = np.nonzero(instance.mask)
            assert instance.box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    union = out.union_mask("dog")
    assert union.shape == (H, W) and union.sum() >= out["dog"].instances[0].mask.sum()
    with pytest.raises(KeyError, match="not a phrase"):
        out["cat"]


def test_a_threshold_above_every_score_answers_none_found(predictor, image):
    with predictor.session(image):
        out = predictor.segment_concepts("red car; dog", score_threshold=1.01)
    assert [c.found for c in out] == [False, False]
    assert all(c.instances == [] and c.boxes.shape == (0, 4) for c in out)
    assert not out.union_mask("dog").any()


def test_an_image_without_automatic_masks_answers_none_found(image):
    torch.manual_seed(0)
    no_masks = ["MODEL.UNIOVSEG.AUTOMATIC.PRED_IOU_THRESH", "1.01"]
    empty = UniOVSegPredictor.from_config(TINY_CONFIG, opts=OPTS + no_masks, device="cpu")
    with empty.session(image):
        out = empty.segment_concepts("red car; dog", score_threshold=0.0)
        assert len(empty.generate_automatic_masks()) == 0
    assert [c.found for c in out] == [False, False]


def test_instances_at_a_threshold_are_the_top_of_the_full_ranking(predictor, image):
    with predictor.session(image):
        ranking = predictor.segment_concepts("dog", score_threshold=0.0)["dog"]
        # Between two scores: the text tower's batching moves scores by ~1e-7 across queries.
        threshold = float(ranking.scores[:2].mean())
        kept = predictor.segment_concepts("dog", score_threshold=threshold)["dog"]
        together = predictor.segment_concepts("red car; dog", score_threshold=0.0)["dog"]
    expected = [i.mask_index for i in ranking.instances if i.score >= threshold]
    assert [i.mask_index for i in kept.instances] == expected
    # The other phrases of a query do not change a phrase's answer.
    assert [i.mask_index for i in together.instances] == [i.mask_index for i in ranking.instances]
    assert np.allclose(together.scores, ranking.scores, atol=1e-5)


def test_one_encoding_and_one_set_of_masks_serve_every_query_of_an_image(
    predictor, image, monkeypatch
):
    model = predictor.model
    calls = {"encode_image": 0, "automatic_masks": 0, "region_embeddings": 0}
    for name in calls:
        original = getattr(model, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(model, name, counted)
    predictor.set_image(image)
    for query in ("red car; dog", "dog", "cat; sky", "tree"):
        predictor.segment_concepts(query)
    assert calls == {"encode_image": 1, "automatic_masks": 1, "region_embeddings": 1}
    predictor.set_image(image[::-1].copy())  # a new image: computed again, once
    predictor.segment_concepts("dog")
    predictor.segment_concepts("cat")
    assert calls == {"encode_image": 2, "automatic_masks": 2, "region_embeddings": 2}
    predictor.reset_image()


def test_errors_come_before_any_computation(predictor, image, monkeypatch):
    predictor.reset_image()
    with pytest.raises(ValueError, match="no image is set"):
        predictor.segment_concepts("dog")
    monkeypatch.setattr(predictor.model, "automatic_masks", None)  # would fail if called
    with predictor.session(image):
        for bad in ("", " ; ", []):
            with pytest.raises(ValueError, match="holds no phrase"):
                predictor.segment_concepts(bad)
        with pytest.raises(ValueError, match="neither a packaged vocabulary"):
            predictor.segment_concepts("dog", background="no_such_vocabulary")


def test_the_demo_concepts_task_writes_instances_and_none_found(tmp_path, image):
    from PIL import Image

    from uniovseg.inference import demo_cli

    Image.fromarray(image).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    argv = ["--config-file", TINY_CONFIG, "--input", str(tmp_path / "scene.png"), "--output"]
    argv += [str(out), "--task", "concepts", "--concepts", "red car; dog", "--device", "cpu"]
    argv += ["--opts", *OPTS, "MODEL.UNIOVSEG.CONCEPTS.SCORE_THRESH", "0.0"]
    assert demo_cli.main(argv) == 0
    info = json.loads((out / "scene.json").read_text())
    assert [c["concept"] for c in info["concepts"]] == ["red car", "dog"]
    assert all(c["found"] for c in info["concepts"])
    assert {r["concept"] for r in info["records"]} == {"red car", "dog"}
    record = info["records"][0]
    assert record["segmentation"]["size"] == [H, W] and 0 <= record["score"] <= 1
    assert (out / "scene_overlay.png").is_file()
    # The same image with an unreachable threshold: every phrase "none found", no records.
    argv[-1] = "1.01"
    assert demo_cli.main([*argv[:5], str(tmp_path / "out2"), *argv[6:]]) == 0
    info = json.loads((tmp_path / "out2" / "scene.json").read_text())
    assert [c["found"] for c in info["concepts"]] == [False, False] and info["records"] == []


def test_the_demo_refuses_concepts_without_the_concepts_task(tmp_path, capsys):
    from uniovseg.inference import demo_cli

    base = ["--config-file", TINY_CONFIG, "--input", str(tmp_path), "--output", str(tmp_path)]
    for extra in (
        ["--task", "concepts"],
        ["--concepts", "dog"],
        ["--task", "concepts", "--concepts", " ; "],
    ):
        with pytest.raises(SystemExit) as exit_info:
            demo_cli.main([*base, *extra])
        assert exit_info.value.code == 2
    assert "red car; dog" in capsys.readouterr().err


# ---------------------------------------------------------------------------- metrics
def test_average_precision_on_a_hand_made_ranking():
    # Ranked TP, FP, TP with 3 ground truths: precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3.
    ap = average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), num_gt=3)
    # Interpolated: recall <= 1/3 -> 1, (1/3, 2/3] -> 2/3, above -> 0 (101 points).
    points = np.linspace(0, 1, 101)
    expected = np.where(points <= 1 / 3, 1.0, np.where(points <= 2 / 3, 2 / 3, 0.0)).mean()
    assert ap == pytest.approx(expected)
    assert math.isnan(average_precision(np.zeros(0), np.zeros(0, bool), num_gt=0))


def test_greedy_matching_gives_each_ground_truth_to_one_prediction():
    ious = np.array([[0.9, 0.6], [0.8, 0.1], [0.55, 0.7]])
    assert greedy_matches(ious).tolist() == [True, False, True]


def test_evaluation_of_things_stuff_and_none_found_answers():
    evaluation = ConceptEvaluation(["car", "sky"], isthing=[True, False])
    car_a, car_b = _block(0, 0), _block(6, 6)
    sky_left, sky_right = _block(0, 0, size=12)[:, :6].copy(), np.zeros((12, 12), bool)
    sky_left = np.pad(sky_left, ((0, 0), (0, 6)))
    sky_right[:, 6:] = True
    # Image 1: two cars, one found (0.9) and a false positive (0.2); sky in two pieces.
    evaluation.add(0, np.stack([car_a, car_b]), np.stack([car_a, _block(8, 0)]), [0.9, 0.2])
    sky = np.ones((12, 12), bool)
    evaluation.add(1, sky[None], np.stack([sky_left, sky_right]), [0.8, 0.6])
    evaluation.next_image()
    # Image 2: no car and no sky; a weak car guess (0.3), nothing for sky.
    evaluation.add(0, np.zeros((0, 12, 12), bool), car_a[None], [0.3])
    evaluation.add(1, np.zeros((0, 12, 12), bool), np.zeros((0, 12, 12), bool), [])
    evaluation.next_image()
    car, sky_row = evaluation.summarize(0.5)["concepts"]
    assert (car["num_gt"], car["true_positives"], car["detections"]) == (2, 1, 1)
    assert car["precision"] == 1.0 and car["recall"] == 0.5
    assert car["none_found_accuracy"] == 1.0 and car["found_rate"] == 1.0
    # Stuff: the union of the pieces passing 0.5 (both) covers the sky: a true positive.
    assert (sky_row["true_positives"], sky_row["recall"], sky_row["ap50"]) == (1, 1.0, 1.0)
    # At 0.7 only the left half passes: IoU 0.5 still matches; at 0.9 none passes.
    assert evaluation.concept_metrics(1, 0.7)["true_positives"] == 1
    assert evaluation.concept_metrics(1, 0.9)["found_rate"] == 0.0
    low = evaluation.concept_metrics(0, 0.25)
    assert low["none_found_accuracy"] == 0.0 and low["image_accuracy"] == 0.5
    threshold, curve = evaluation.calibrate([0.1, 0.25, 0.5, 0.95])
    assert threshold == 0.5 and len(curve) == 4
