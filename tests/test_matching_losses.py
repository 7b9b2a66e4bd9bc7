"""Point sampling, many-to-many matching, stage-1 losses and the criterion, on hand-made cases."""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from uniovseg.modeling import criterion as criterion_module
from uniovseg.modeling.criterion import PromptMaskCriterion
from uniovseg.modeling.losses import (
    dice_loss,
    downsample_masks,
    iou_head_loss,
    mask_iou,
    sigmoid_bce_loss,
)
from uniovseg.modeling.matching import (
    PromptMatcher,
    batch_dice_cost,
    batch_sigmoid_bce_cost,
    point_containment,
)
from uniovseg.modeling.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    sample_masks_at_points,
)

FRAME = 32  # input frame side in pixels; logits are at stride 4 -> 8 x 8
STRIDE = 4


class Out(NamedTuple):
    """Stand-in for the decoder's MaskDecoderOutput (duck-typed by the criterion)."""

    mask_logits: torch.Tensor
    iou_logits: torch.Tensor
    aux_outputs: list


def _world_gts() -> torch.Tensor:
    """Four gt masks on a 32 x 32 frame; 0 contains 1 (object and part)."""
    gt = torch.zeros(4, FRAME, FRAME, dtype=torch.bool)
    gt[0, :, :16] = True  # left half ("object")
    gt[1, :8, :8] = True  # top-left block inside gt 0 ("part")
    gt[2, 16:, 16:] = True  # bottom-right quarter
    gt[3, :8, 24:] = True  # small top-right block
    return gt


def _logits_like(mask: torch.Tensor) -> torch.Tensor:
    """+10 / -10 logits at stride 4 that reproduce a 32 x 32 mask."""
    small = F.avg_pool2d(mask.float()[None, None], STRIDE)[0, 0] >= 0.5
    return small.float() * 20.0 - 10.0


NEG = -10.0 * torch.ones(8, 8)
# p0 at (4, 4) lies in gt 0 and gt 1; p1 at (20, 20) in gt 2 only; p2 at (20, 4) in none.
POINTS = torch.tensor([[4.0, 4.0], [20.0, 20.0], [20.0, 4.0]])


def _hand_logits() -> torch.Tensor:
    gt = _world_gts()
    p0 = torch.stack([_logits_like(gt[0]), NEG, _logits_like(gt[1]), _logits_like(gt[2])])
    p1 = torch.stack([NEG, NEG, NEG, _logits_like(gt[2])])
    p2 = torch.stack([_logits_like(gt[0])] * 4)
    return torch.stack([p0, p1, p2])  # [P=3, M=4, 8, 8]


# ----------------------------------------------------------------------------- point sampling
def test_sample_masks_at_points_equals_grid_sample():
    maps = torch.rand(3, 7, 9)
    idx = torch.tensor([0, 2, 1, 1, 0])
    coords = torch.rand(5, 11, 2) * 1.2 - 0.1  # some points outside the frame
    expected = point_sample(maps[idx, None], coords)[:, 0]
    assert torch.allclose(sample_masks_at_points(maps, idx, coords), expected, atol=1e-6)
    # Masks in the top-left of a larger frame: same as sampling the zero-padded masks.
    padded = F.pad(maps, (0, 3, 0, 3))
    expected = point_sample(padded[idx, None], coords)[:, 0]
    got = sample_masks_at_points(maps, idx, coords, frame_size=(10, 12))
    assert torch.allclose(got, expected, atol=1e-6)
    with pytest.raises(ValueError, match="smaller than the masks"):
        sample_masks_at_points(maps, idx, coords, frame_size=(5, 5))


def test_point_sample_reads_pixel_centres():
    image = torch.arange(12.0).view(1, 1, 3, 4)
    # Centre of pixel (row 1, col 2) in normalised coordinates.
    coords = torch.tensor([[[(2 + 0.5) / 4, (1 + 0.5) / 3]]])
    assert point_sample(image, coords).item() == pytest.approx(6.0)


def test_uncertain_points_prefer_the_boundary():
    # Logits are 0 (maximally uncertain) on the left half and +10 on the right half.
    logits = torch.full((2, 1, 16, 16), 10.0)
    logits[:, :, :, :8] = 0.0
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 200, 3, 0.75)
    assert coords.shape == (2, 200, 2)
    assert coords.min() >= 0 and coords.max() <= 1
    # ~300 of the 600 candidates are uncertain, so all 150 importance points are on the left.
    assert (coords[:, :150, 0] < 0.5).all()
    assert not (coords[:, 150:, 0] < 0.5).all()  # the random remainder covers both halves


# ----------------------------------------------------------------------------- loss values
def test_bce_and_dice_hand_values():
    logits = torch.tensor([[0.0, 0.0], [20.0, -20.0], [math.log(3.0), 0.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    bce = sigmoid_bce_loss(logits, targets)
    # Row 0: log 2 per point. Row 1: ~0. Row 2: (-log 0.75 - log 0.5) / 2.
    assert bce[0].item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert bce[1].item() == pytest.approx(0.0, abs=1e-6)
    assert bce[2].item() == pytest.approx((-math.log(0.75) - math.log(0.5)) / 2, abs=1e-6)
    dice = dice_loss(logits, targets)
    # Row 0: p = (.5, .5): 1 - (2 * .5 + 1) / (1 + 1 + 1) = 1/3. Row 1: ~0.
    # Row 2: p = (.75, .5): 1 - (2 * 1.25 + 1) / (1.25 + 2 + 1) = 1 - 3.5 / 4.25.
    assert dice[0].item() == pytest.approx(1 / 3, abs=1e-6)
    assert dice[1].item() == pytest.approx(0.0, abs=1e-6)
    assert dice[2].item() == pytest.approx(1 - 3.5 / 4.25, abs=1e-6)


def test_batched_costs_equal_pairwise_losses():
    logits = torch.randn(5, 30)
    targets = (torch.rand(3, 30) > 0.5).float()
    bce = batch_sigmoid_bce_cost(logits, targets)
    dice = batch_dice_cost(logits, targets)
    for q, g in itertools.product(range(5), range(3)):
        assert bce[q, g] == pytest.approx(
            sigmoid_bce_loss(logits[q : q + 1], targets[g : g + 1]).item(), abs=1e-5
        )
        assert dice[q, g] == pytest.approx(
            dice_loss(logits[q : q + 1], targets[g : g + 1]).item(), abs=1e-5
        )


def test_downsample_and_iou_targets():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True  # full top-left cell -> on
    mask[0, 0, 2] = True  # 1/4 of the top-right cell -> off
    mask[0, 2:, 0] = True  # 2/4 of the bottom-left cell -> on (half counts)
    small = downsample_masks(mask, (2, 2), 2)
    assert small[0].tolist() == [[True, False], [True, False]]
    # A 3 x 3 mask inside a 2 x 2 grid of stride 2 (frame 4 x 4): padded with background.
    assert downsample_masks(torch.ones(1, 3, 3, dtype=torch.bool), (2, 2), 2)[0].tolist() == [
        [True, True],
        [True, False],
    ]
    pred = torch.tensor([[[True, True], [False, False]]])
    assert mask_iou(pred, small).item() == pytest.approx(1 / 3)
    empty = torch.zeros(1, 2, 2, dtype=torch.bool)
    assert mask_iou(empty, empty).item() == 0.0
    # sigmoid(0) = 0.5 against a real IoU of 1 -> 0.25.
    assert iou_head_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(0.25)


# ----------------------------------------------------------------------------- matching
def test_point_containment():
    contain = point_containment(_world_gts(), torch.cat([POINTS, torch.tensor([[40.0, 3.0]])]))
    assert contain.tolist() == [
        [True, True, False, False],
        [False, False, True, False],
        [False, False, False, False],
        [False, False, False, False],  # outside the frame
    ]


def test_many_to_many_matching_hand_case():
    matches = PromptMatcher(num_points=6000).match_points(_hand_logits(), _world_gts(), POINTS)
    # p0 (in gt 0 and gt 1): token 0 looks like gt 0, token 2 like gt 1 -> two pairs.
    # p1 (in gt 2): token 3 looks like gt 2. p2 is in no mask: no pair, whatever it predicts.
    assert matches.prompt_idx.tolist() == [0, 0, 1]
    assert matches.token_idx.tolist() == [0, 2, 3]
    assert matches.gt_idx.tolist() == [0, 1, 2]
    assert len(matches) == 3


def test_fewer_tokens_than_candidates_keeps_the_best_fitting_gt():
    gt = _world_gts()
    matcher = PromptMatcher(num_points=6000)
    point = POINTS[:1]  # in gt 0 and gt 1
    for target in (0, 1):
        logits = _logits_like(gt[target])[None, None]  # P = 1, M = 1
        matches = matcher.match_points(logits, gt, point)
        assert matches.gt_idx.tolist() == [target]
        assert matches.token_idx.tolist() == [0]


def test_no_gt_or_no_prompt_gives_no_pairs():
    matcher = PromptMatcher(num_points=100)
    assert (
        len(
            matcher.match_points(
                _hand_logits(), torch.zeros(0, FRAME, FRAME, dtype=torch.bool), POINTS
            )
        )
        == 0
    )
    assert len(matcher.match_points(torch.zeros(0, 4, 8, 8), _world_gts(), torch.zeros(0, 2))) == 0
    boxes = PromptMatcher.match_boxes(3)
    assert boxes.prompt_idx.tolist() == [0, 1, 2]
    assert boxes.token_idx.tolist() == [0, 0, 0]
    assert boxes.gt_idx.tolist() == [0, 1, 2]


class _FixedCostMatcher(PromptMatcher):
    """A matcher whose cost is a given [Q, G] matrix (to check the assignment logic alone)."""

    def __init__(self, cost: torch.Tensor):
        super().__init__(num_points=10)
        self.cost = cost

    def pairwise_cost(self, mask_logits, gt_masks):
        return self.cost[: mask_logits.shape[0]]


def test_assignment_is_the_minimum_cost_injection_over_candidates():
    torch.manual_seed(3)
    num_prompts, num_tokens, num_gt = 6, 3, 5
    gt = torch.zeros(num_gt, 8, 8, dtype=torch.bool)
    # Prompt p sits at pixel (p, p); gt g contains the pixels with x >= g, y >= g, so prompt p
    # lies in gts 0..p (up to 5 nested candidates for M = 3 tokens).
    for g in range(num_gt):
        gt[g, g:, g:] = True
    points = torch.tensor([[p + 0.5, p + 0.5] for p in range(num_prompts)])
    cost = torch.rand(num_prompts, num_tokens, num_gt)
    matcher = _FixedCostMatcher(cost.flatten(0, 1))
    matches = matcher.match_points(torch.zeros(num_prompts, num_tokens, 2, 2), gt, points)
    for p in range(num_prompts):
        cand = [g for g in range(num_gt) if g <= p]
        sel = matches.prompt_idx == p
        got = sorted(
            zip(matches.token_idx[sel].tolist(), matches.gt_idx[sel].tolist(), strict=True)
        )
        assert len(got) == min(num_tokens, len(cand))
        # Brute force over every injective assignment of min(M, n) tokens/gts.
        best, best_cost = None, float("inf")
        k = min(num_tokens, len(cand))
        for toks in itertools.permutations(range(num_tokens), k):
            for gts in itertools.permutations(cand, k):
                total = sum(cost[p, t, g].item() for t, g in zip(toks, gts, strict=True))
                if total < best_cost - 1e-9:
                    best, best_cost = sorted(zip(toks, gts, strict=True)), total
        assert got == best


# ----------------------------------------------------------------------------- criterion
def _criterion(**kwargs) -> PromptMaskCriterion:
    kwargs.setdefault("num_points", 256)
    return PromptMaskCriterion(matcher=PromptMatcher(num_points=2000), **kwargs)


def _targets(gt: torch.Tensor, points: torch.Tensor) -> dict:
    boxes = torch.zeros(len(gt), 4)
    for g, m in enumerate(gt):
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes[g] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return {"gt_masks": gt, "point_coords": points, "box_prompts": boxes}


def test_criterion_known_values_with_zero_logits():
    # Zero logits: BCE is log 2 at every point whatever the target; the thresholded masks are
    # empty so every IoU target is 0 and sigmoid(0) = 0.5 gives 0.25 per pair.
    gt = _world_gts()
    logits = torch.zeros(1, 3, 4, 8, 8, requires_grad=True)
    ious = torch.zeros(1, 3, 4, requires_grad=True)
    losses = _criterion()({"point": Out(logits, ious, [])}, [_targets(gt, POINTS)])
    assert set(losses) == {"loss_mask_bce_point", "loss_mask_dice_point", "loss_iou_point"}
    assert losses["loss_mask_bce_point"].item() == pytest.approx(2.0 * math.log(2.0), abs=1e-5)
    assert losses["loss_iou_point"].item() == pytest.approx(0.25, abs=1e-6)
    assert 0.0 < losses["loss_mask_dice_point"].item() < 1.0


def test_criterion_iou_target_is_the_real_iou():
    # One box prompt; the prediction covers exactly half of its gt (IoU 0.5 at stride 4).
    gt = torch.zeros(1, FRAME, FRAME, dtype=torch.bool)
    gt[0, :, :16] = True  # logit columns 0-3
    logits = torch.full((1, 1, 1, 8, 8), -10.0)
    logits[..., :2] = 10.0  # columns 0-1 only
    for p_pred, expected in ((0.5, 0.0), (0.9, 0.16), (0.1, 0.16)):
        ious = torch.full((1, 1, 1), math.log(p_pred / (1 - p_pred)))
        losses = _criterion()({"box": Out(logits, ious, [])}, [_targets(gt, torch.zeros(0, 2))])
        assert losses["loss_iou_box"].item() == pytest.approx(expected, abs=1e-5)


def test_perfect_predictions_score_better_than_wrong_ones():
    gt = _world_gts()
    good = _hand_logits()[None]
    bad = -good
    crit = _criterion()
    target = [_targets(gt, POINTS)]
    zero = torch.zeros(1, 3, 4)
    loss_good = crit({"point": Out(good, zero, [])}, target)
    loss_bad = crit({"point": Out(bad, zero, [])}, target)
    # Not zero: the stride-4 logits are interpolated across the sharp full-resolution edges,
    # exactly where the importance sampler puts most points.
    for key in ("loss_mask_bce_point", "loss_mask_dice_point"):
        assert 4 * loss_good[key] < loss_bad[key]


def test_gradients_reach_only_matched_predictions():
    gt = _world_gts()
    logits = (_hand_logits()[None] * 0.1).requires_grad_(True)
    ious = torch.zeros(1, 3, 4, requires_grad=True)
    losses = _criterion()({"point": Out(logits, ious, [])}, [_targets(gt, POINTS)])
    sum(losses.values()).backward()
    grad_norm = logits.grad.flatten(3).abs().sum(-1)  # [1, P, M]
    matched = {(0, 0), (0, 2), (1, 3)}
    for p, t in itertools.product(range(3), range(4)):
        assert (grad_norm[0, p, t] > 0) == ((p, t) in matched), (p, t)
        assert (ious.grad[0, p, t] != 0) == ((p, t) in matched), (p, t)


@pytest.mark.parametrize("case", ["no_gt", "no_prompt"])
def test_empty_targets_give_finite_zero_losses_and_zero_gradients(case):
    if case == "no_gt":  # points but no mask (so no box prompt either)
        gt = torch.zeros(0, FRAME, FRAME, dtype=torch.bool)
        points = POINTS
    else:  # masks (and their boxes) but no point prompt
        gt = _world_gts()
        points = torch.zeros(0, 2)
    point_logits = torch.randn(2, len(points), 4, 8, 8, requires_grad=True)
    point_ious = torch.randn(2, len(points), 4, requires_grad=True)
    box_logits = torch.randn(2, len(gt), 1, 8, 8, requires_grad=True)
    box_ious = torch.randn(2, len(gt), 1, requires_grad=True)
    aux = [Out(point_logits * 2, point_ious * 2, [])]
    outputs = {"point": Out(point_logits, point_ious, aux), "box": Out(box_logits, box_ious, [])}
    losses = _criterion()(outputs, [_targets(gt, points), _targets(gt, points)])
    assert "loss_mask_bce_point_0" in losses
    zero_names = [n for n in losses if case == "no_gt" or "_point" in n]
    for name in zero_names:
        assert torch.isfinite(losses[name]) and losses[name].item() == 0.0, name
    if case == "no_prompt":
        assert losses["loss_mask_bce_box"].item() > 0
    sum(losses[n] for n in zero_names).backward()
    for tensor in (point_logits, point_ious) + ((box_logits, box_ious) if case == "no_gt" else ()):
        assert tensor.grad is not None and torch.count_nonzero(tensor.grad) == 0


def test_deep_supervision_keys_and_padding_rows():
    gt = _world_gts()
    final = torch.cat([_hand_logits(), torch.zeros(2, 4, 8, 8)])[None].requires_grad_(True)  # P = 5
    ious = torch.zeros(1, 5, 4)
    aux = [Out(final * 0.5, ious, []), Out(final * 0.25, ious, [])]
    box_logits = torch.zeros(1, 4, 1, 8, 8, requires_grad=True)
    outputs = {
        "point": Out(final, ious, aux),
        "box": Out(box_logits, torch.zeros(1, 4, 1), aux[:1]),
    }
    targets = [_targets(gt, POINTS)]  # 3 real point prompts, rows 3-4 are padding
    for per_layer in (True, False):
        crit = _criterion(match_per_layer=per_layer)
        losses = crit(outputs, targets)
        expected = {
            f"loss_{n}_{t}{s}"
            for n in ("mask_bce", "mask_dice", "iou")
            for t, suffixes in (("point", ("", "_0", "_1")), ("box", ("", "_0")))
            for s in suffixes
        }
        assert set(losses) == expected
        assert all(torch.isfinite(v) for v in losses.values())
    final.grad = None
    sum(_criterion(deep_supervision=False)(outputs, targets).values()).backward()
    assert torch.count_nonzero(final.grad[0, 3:]) == 0  # padding rows are ignored
    assert set(_criterion(deep_supervision=False)(outputs, targets)) == {
        f"loss_{n}_{t}" for n in ("mask_bce", "mask_dice", "iou") for t in ("point", "box")
    }


def test_normalisation_averages_pair_counts_over_processes(monkeypatch):
    gt = _world_gts()
    logits = torch.zeros(1, 3, 4, 8, 8)
    target = [_targets(gt, POINTS)]  # 3 point pairs here
    single = _criterion()({"point": Out(logits, torch.zeros(1, 3, 4), [])}, target)

    def fake_all_reduce(tensor):  # the other process has 9 pairs
        tensor += torch.tensor([9.0])

    monkeypatch.setattr(criterion_module.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    multi = _criterion()({"point": Out(logits, torch.zeros(1, 3, 4), [])}, target)
    # Normaliser 3 alone, (3 + 9) / 2 = 6 with two processes.
    assert multi["loss_iou_point"].item() == pytest.approx(single["loss_iou_point"].item() / 2)


def test_criterion_validates_inputs():
    gt = _world_gts()
    crit = _criterion()
    good = Out(torch.zeros(1, 3, 4, 8, 8), torch.zeros(1, 3, 4), [])
    with pytest.raises(ValueError, match="unknown prompt type"):
        crit({"scribble": good}, [_targets(gt, POINTS)])
    with pytest.raises(ValueError, match="iou_logits"):
        crit({"point": Out(good.mask_logits, torch.zeros(1, 3), [])}, [_targets(gt, POINTS)])
    with pytest.raises(ValueError, match="only 2 per image"):
        crit(
            {"point": Out(good.mask_logits[:, :2], good.iou_logits[:, :2], [])},
            [_targets(gt, POINTS)],
        )
    with pytest.raises(ValueError, match="targets"):
        crit({"point": good}, [_targets(gt, POINTS)] * 2)


def test_criterion_and_matcher_from_config():
    from detectron2.config import get_cfg

    from uniovseg.config import add_uniovseg_config

    cfg = get_cfg()
    add_uniovseg_config(cfg)
    crit = PromptMaskCriterion(cfg)
    assert (crit.bce_weight, crit.dice_weight, crit.iou_weight) == (2.0, 1.0, 1.0)
    assert (crit.num_points, crit.oversample_ratio, crit.importance_sample_ratio) == (
        12544,
        3.0,
        0.75,
    )
    assert crit.matcher.num_points == 6000 and crit.deep_supervision and crit.match_per_layer


def test_matching_cost_stays_float32_under_autocast():
    # Sums over 6000 points of large BCE terms overflow half precision; the cost must not.
    logits = torch.randn(8, 16, 16) * 200.0
    gt = torch.rand(3, 64, 64) > 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cost = PromptMatcher(num_points=6000).pairwise_cost(logits, gt)
    assert cost.dtype == torch.float32 and torch.isfinite(cost).all()
    assert cost.shape == (8, 3)
