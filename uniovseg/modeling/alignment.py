"""Mask-text alignment (paper Sec. 3.3, Eq. 6-8): match predicted masks to caption entities and
pull the matched (adapted) region embeddings towards their entity's text embedding.

Per caption image: the frozen stage-1 model predicts K masks from a point grid; their CLIP region
embeddings ``r_i`` (Eq. 5) at every ensemble input size give one cost matrix per size (Eq. 6),
averaged over sizes (Eq. 7); Hungarian matching on the K x E average gives min(K, E) pairs, from
which an optional confidence threshold drops the doubtful ones; the loss (Eq. 8) is
``1 - cos(r'_i, t_k)`` averaged over the batch's pairs, where ``r'_i`` is the adapted region
embedding (:mod:`uniovseg.modeling.feature_adapter`).

**The cost of Eq. 6.** The paper prints ``delta_ik = exp(delta'_ik) / sum_j exp(delta'_ij)`` with
``delta'_ik = 1 - cos(r_i, t_k)``: a softmax over entities of the *distance*. Since
``exp(1 - c) = e * exp(-c)``, this is ``softmax_k(-cos)``: within a row it grows with the distance,
so it is a valid cost for a minimising matcher (hand-made check: r_0 close to t_0 and r_1 close to
t_1 give the diagonal). The opposite sign, ``softmax_k(-delta') = softmax_k(cos)``, is a
classification probability: as a cost it would pick the *least* similar pairs (the anti-diagonal
in the same check), so it could only be used negated. We follow the paper's sign.

The row softmax has a second property that matters more: it is invariant to adding a constant
to a mask's distances, so it compares a mask's similarity to one entity *relative to* its
similarity to the caption's other entities. That discounts generic masks (the whole image is
similar to every entity), but with a single entity every row is exactly 1 and the match is
arbitrary (in a toy simulation with one entity per caption the paper's cost picked the right
mask 13% of the time, the plain distance 75-99%). We therefore use
``delta = softmax_weight * softmax_k(delta') + distance_weight * delta'`` with defaults 1 and
0.001: the paper's cost, with the raw distance breaking its ties (one-entity captions) and barely
moving anything else. ``distance_weight=0`` is Eq. 6 exactly; ``softmax_weight=0`` is the plain
distance.

**Confidence threshold.** Pairs whose scale-averaged cosine similarity is below
``min_similarity`` are dropped after matching (cosine is comparable across images and captions,
unlike the row-normalised cost); ``-1`` keeps every pair.

**Contrastive term (beyond the paper, off by default).** Eq. 8 only pulls each matched region
towards its entity; nothing keeps regions of different entities apart. When the CLIP's entity
embeddings are close to each other (a weak or small CLIP), the adapter can lower Eq. 8 for every
pair at once by moving *all* regions towards the entities' common direction, and the classifier
then names every mask with the one class nearest to that direction (measured on the synthetic
world: see the README's stage-2 section). ``contrastive_weight > 0`` adds an InfoNCE term over
the batch: each matched region must be closer to its own entity than to every other entity
phrase of the batch (cross-entropy over ``logit_scale x cos``). ``0`` is the paper's loss.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from scipy.optimize import linear_sum_assignment

__all__ = [
    "AlignmentCost",
    "AlignmentMatch",
    "MaskTextAligner",
    "MaskTextMatcher",
    "alignment_cost",
    "alignment_loss",
    "contrastive_alignment_loss",
    "match_regions_to_entities",
]

logger = logging.getLogger(__name__)


class AlignmentCost(NamedTuple):
    """Attributes:
    cost: float [K, E], Eq. 7: the mean over scales of Eq. 6's cost (lower = better pair).
    similarity: float [K, E], the mean over scales of cos(r_i, t_k), in [-1, 1].
    """

    cost: torch.Tensor
    similarity: torch.Tensor


class AlignmentMatch(NamedTuple):
    """Matched pairs (after the threshold), by increasing region index.

    Attributes:
        region_indices: int64 [M], rows of the cost matrix (masks).
        entity_indices: int64 [M], columns (entities).
        similarity: float [M], the pairs' scale-averaged cosine similarity.
    """

    region_indices: torch.Tensor
    entity_indices: torch.Tensor
    similarity: torch.Tensor

    def __len__(self) -> int:
        return int(self.region_indices.numel())


def alignment_cost(
    region_embeds: torch.Tensor,
    entity_embeds: torch.Tensor,
    *,
    softmax_weight: float = 1.0,
    distance_weight: float = 0.0,
) -> AlignmentCost:
    """Cost matrix between masks and entities (Eq. 6), averaged over ensemble scales (Eq. 7).

    Args:
        region_embeds: [S, K, D] region embeddings at S input sizes (or [K, D] for one).
        entity_embeds: [E, D] entity text embeddings.
        softmax_weight: Weight of ``softmax_k(delta')`` (Eq. 6 as printed; see module doc).
        distance_weight: Weight of the plain distance ``delta' = 1 - cos``.

    Returns:
        :class:`AlignmentCost` with [K, E] ``cost`` and ``similarity`` (float32).
    """
    if region_embeds.dim() == 2:
        region_embeds = region_embeds[None]
    if region_embeds.dim() != 3 or entity_embeds.dim() != 2:
        raise ValueError(
            "alignment_cost expects region_embeds [S, K, D] and entity_embeds [E, D], got "
            f"{tuple(region_embeds.shape)} and {tuple(entity_embeds.shape)}"
        )
    if region_embeds.shape[-1] != entity_embeds.shape[-1]:
        raise ValueError(
            f"embedding sizes differ: regions {region_embeds.shape[-1]}, entities "
            f"{entity_embeds.shape[-1]}"
        )
    similarity = torch.einsum(
        "skd,ed->ske",
        F.normalize(region_embeds.float(), dim=-1),
        F.normalize(entity_embeds.float(), dim=-1),
    )
    distance = 1.0 - similarity  # delta'
    per_scale = distance_weight * distance
    if softmax_weight and distance.shape[-1] > 0:
        per_scale = per_scale + softmax_weight * distance.softmax(dim=-1)
    return AlignmentCost(cost=per_scale.mean(dim=0), similarity=similarity.mean(dim=0))


def match_regions_to_entities(
    cost: AlignmentCost, *, min_similarity: float = -1.0
) -> AlignmentMatch:
    """Hungarian matching on the cost (min(K, E) pairs), then the confidence threshold.

    Args:
        cost: An :class:`AlignmentCost` with [K, E] matrices.
        min_similarity: Drop pairs whose ``similarity`` is below this (-1 keeps all).

    Returns:
        :class:`AlignmentMatch` on the cost's device.
    """
    device = cost.cost.device
    num_regions, num_entities = cost.cost.shape
    if num_regions == 0 or num_entities == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return AlignmentMatch(empty, empty, torch.zeros(0, device=device))
    matrix = cost.cost.detach().double().cpu().numpy()
    if not np.isfinite(matrix).all():
        raise ValueError("the alignment cost has NaN/inf entries: check the region embeddings")
    rows, cols = linear_sum_assignment(matrix)
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=device)
    cols_t = torch.as_tensor(cols, dtype=torch.long, device=device)
    similarity = cost.similarity[rows_t, cols_t]
    keep = similarity >= min_similarity
    return AlignmentMatch(rows_t[keep], cols_t[keep], similarity[keep])


def alignment_loss(region_embeds: torch.Tensor, entity_embeds: torch.Tensor) -> torch.Tensor:
    """Eq. 8 per pair: ``1 - cos(r'_i, t_k)``.

    Args:
        region_embeds: [M, D] (adapted) region embeddings of the matched masks.
        entity_embeds: [M, D] text embeddings of their entities.

    Returns:
        [M] losses in [0, 2].
    """
    if region_embeds.shape != entity_embeds.shape:
        raise ValueError(
            f"alignment_loss: shapes differ, {tuple(region_embeds.shape)} vs "
            f"{tuple(entity_embeds.shape)}"
        )
    return 1.0 - F.cosine_similarity(region_embeds, entity_embeds.to(region_embeds.dtype), dim=-1)


def contrastive_alignment_loss(
    region_embeds: torch.Tensor,
    entity_table: torch.Tensor,
    targets: torch.Tensor,
    *,
    logit_scale: float | torch.Tensor,
) -> torch.Tensor:
    """InfoNCE of matched regions against a batch's entity phrases (see the module doc).

    Args:
        region_embeds: [M, D] (adapted) region embeddings of the matched masks.
        entity_table: [U, D] text embeddings of the batch's distinct entity phrases.
        targets: int64 [M], each region's entity row in ``entity_table``.
        logit_scale: Temperature multiplying the cosine similarities (e.g. CLIP's).

    Returns:
        [M] cross-entropy losses; with a single phrase in the batch there is no negative and the
        loss is an exact 0 (still connected to ``region_embeds``).
    """
    if (
        region_embeds.shape[0] != targets.shape[0]
        or region_embeds.shape[-1] != entity_table.shape[-1]
    ):
        raise ValueError(
            f"contrastive_alignment_loss: regions {tuple(region_embeds.shape)}, entity table "
            f"{tuple(entity_table.shape)} and targets {tuple(targets.shape)} do not fit"
        )
    logits = logit_scale * (
        F.normalize(region_embeds, dim=-1) @ F.normalize(entity_table.to(region_embeds), dim=-1).t()
    )
    return F.cross_entropy(logits, targets, reduction="none")


class MaskTextMatcher:
    """Eq. 6-7 cost + Hungarian matching + confidence threshold, from config."""

    @configurable
    def __init__(
        self,
        *,
        softmax_weight: float = 1.0,
        distance_weight: float = 0.001,
        min_similarity: float = -1.0,
    ) -> None:
        """
        Args:
            softmax_weight: Weight of Eq. 6's softmax over entities of the distance.
            distance_weight: Weight of the plain distance (breaks the softmax's ties).
            min_similarity: Confidence threshold on the pairs' cosine similarity (-1: off).
        """
        if softmax_weight < 0 or distance_weight < 0 or softmax_weight + distance_weight == 0:
            raise ValueError(
                "MODEL.UNIOVSEG.ALIGNMENT.COST_SOFTMAX_WEIGHT and COST_DISTANCE_WEIGHT must be "
                f">= 0 and not both 0, got {softmax_weight}, {distance_weight}"
            )
        if not -1.0 <= min_similarity <= 1.0:
            raise ValueError(
                f"MODEL.UNIOVSEG.ALIGNMENT.MIN_SIMILARITY must be in [-1, 1], got {min_similarity}"
            )
        self.softmax_weight = float(softmax_weight)
        self.distance_weight = float(distance_weight)
        self.min_similarity = float(min_similarity)

    @classmethod
    def from_config(cls, cfg) -> dict:
        a = cfg.MODEL.UNIOVSEG.ALIGNMENT
        return {
            "softmax_weight": a.COST_SOFTMAX_WEIGHT,
            "distance_weight": a.COST_DISTANCE_WEIGHT,
            "min_similarity": a.MIN_SIMILARITY,
        }

    def __call__(self, region_embeds: torch.Tensor, entity_embeds: torch.Tensor) -> AlignmentMatch:
        """[S, K, D] region embeddings and [E, D] entity embeddings -> matched pairs."""
        cost = alignment_cost(
            region_embeds,
            entity_embeds,
            softmax_weight=self.softmax_weight,
            distance_weight=self.distance_weight,
        )
        return match_regions_to_entities(cost, min_similarity=self.min_similarity)


class MaskTextAligner:
    """The stage-2 criterion on a batch of caption images (no parameters of its own), in
    Mask2Former's ``SetCriterion(outputs, targets)`` shape: the model computes each image's
    masks and their region embeddings, this matches them to the caption's entities (Eq. 6-7)
    and returns the loss (Eq. 8).

    The model's masks come from the automatic mask engine (point grid, IoU and stability
    filters, containment-aware NMS), the same procedure that produces the masks classified at
    open-vocabulary inference, so alignment trains on the kind of mask it will name; NMS also
    removes near-duplicates that would compete for one entity, and the filters keep junk masks
    from stealing matches.
    """

    @configurable
    def __init__(
        self,
        *,
        matcher: MaskTextMatcher,
        loss_weight: float = 1.0,
        contrastive_weight: float = 0.0,
        contrastive_logit_scale: float = 0.0,
    ) -> None:
        """
        Args:
            matcher: Cost, Hungarian matching and threshold.
            loss_weight: Weight of Eq. 8's loss (release: 1).
            contrastive_weight: Weight of the contrastive term (beyond the paper; 0 = off).
            contrastive_logit_scale: Its temperature; ``<= 0`` uses CLIP's learned one.
        """
        if loss_weight < 0 or contrastive_weight < 0:
            raise ValueError(
                "ALIGNMENT.LOSS_WEIGHT and ALIGNMENT.CONTRASTIVE_WEIGHT must be >= 0, got "
                f"{loss_weight}, {contrastive_weight}"
            )
        if loss_weight == 0 and contrastive_weight == 0:
            raise ValueError("ALIGNMENT.LOSS_WEIGHT and ALIGNMENT.CONTRASTIVE_WEIGHT are both 0")
        self.matcher = matcher
        self.loss_weight = float(loss_weight)
        self.contrastive_weight = float(contrastive_weight)
        self.contrastive_logit_scale = float(contrastive_logit_scale)

    @classmethod
    def from_config(cls, cfg) -> dict:
        a = cfg.MODEL.UNIOVSEG.ALIGNMENT
        return {
            "matcher": MaskTextMatcher(cfg),
            "loss_weight": a.LOSS_WEIGHT,
            "contrastive_weight": a.CONTRASTIVE_WEIGHT,
            "contrastive_logit_scale": a.CONTRASTIVE_LOGIT_SCALE,
        }

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The keys of the losses this criterion returns."""
        return (
            ("loss_align", "loss_align_contrastive") if self.contrastive_weight else ("loss_align",)
        )

    def __call__(
        self,
        outputs: Sequence[dict],
        targets: Sequence[dict],
        *,
        logit_scale: float | torch.Tensor = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Alignment loss of a batch of caption images.

        Args:
            outputs: Per image: ``num_masks`` (K) and, when the image has masks and entities,
                ``ensemble_region_embeds`` [S, K, D] (the frozen ``r_i`` at each ensemble input
                size, for matching) and ``region_embeds`` [K, D] (the adapted ``r'_i``, the
                embeddings being trained).
            targets: Per image: ``entities`` (E phrases, may be empty) and ``entity_embeds``
                [E, D] (their text embeddings).
            logit_scale: CLIP's temperature, used by the contrastive term when
                ``contrastive_logit_scale <= 0``.

        Returns:
            ``{"loss_align": scalar}``: ``loss_weight`` x the mean of Eq. 8 over the batch's
            matched pairs; with a contrastive weight, also ``"loss_align_contrastive"``: its
            weight x the mean of :func:`contrastive_alignment_loss` over the same pairs. An
            empty dict when the batch has no pair (the model then returns zeros connected to
            the adapter).
        """
        # The batch's distinct phrases, in order of first appearance (the contrastive table).
        phrase_rows: dict[str, int] = {}
        phrase_embeds = []
        for target in targets:
            for phrase, embed in zip(target["entities"], target["entity_embeds"], strict=True):
                if phrase not in phrase_rows:
                    phrase_rows[phrase] = len(phrase_embeds)
                    phrase_embeds.append(embed)
        losses, adapted_all, targets_all, num_pairs = [], [], [], 0
        for output, target in zip(outputs, targets, strict=True):
            if "region_embeds" not in output or len(target["entities"]) == 0:
                continue
            text = target["entity_embeds"]
            match = self.matcher(output["ensemble_region_embeds"], text)
            if len(match) == 0:
                continue
            adapted = output["region_embeds"][match.region_indices]
            losses.append(alignment_loss(adapted, text[match.entity_indices]))
            adapted_all.append(adapted)
            entities = target["entities"]
            targets_all.extend(phrase_rows[entities[k]] for k in match.entity_indices.tolist())
            num_pairs += len(match)
        _log_stats(
            [o["num_masks"] for o in outputs], [len(t["entities"]) for t in targets], num_pairs
        )
        if not losses:
            return {}
        out = {"loss_align": self.loss_weight * torch.cat(losses).mean()}
        if self.contrastive_weight:
            scale = self.contrastive_logit_scale
            contrastive = contrastive_alignment_loss(
                torch.cat(adapted_all),
                torch.stack(phrase_embeds),
                torch.as_tensor(targets_all, dtype=torch.long, device=adapted_all[0].device),
                logit_scale=scale if scale > 0 else logit_scale,
            )
            out["loss_align_contrastive"] = self.contrastive_weight * contrastive.mean()
        return out


def _log_stats(num_masks: list[int], num_entities: list[int], pairs: int) -> None:
    from detectron2.utils.events import get_event_storage, has_event_storage

    if not has_event_storage():
        return
    storage = get_event_storage()
    num = max(1, len(num_masks))
    storage.put_scalar("align/masks_per_image", sum(num_masks) / num)
    storage.put_scalar("align/entities_per_image", sum(num_entities) / num)
    storage.put_scalar("align/pairs_per_image", pairs / num)
