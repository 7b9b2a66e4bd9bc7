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
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from scipy.optimize import linear_sum_assignment

from ..inference import automatic_mask_generator as amg
from .entity_embedding import EntityEmbedder
from .pixel_decoder import PixelDecoderOutput
from .region_embedding import clip_dense_at_sizes, embed_regions

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

# (pixel features of one image, point_coords [1, P, 2]) -> (mask_logits [1, P, M, h, w],
# iou_logits [1, P, M]): the promptable decoder run on precomputed features.
DecodePointsFn = Callable[[PixelDecoderOutput, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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
    """The stage-2 training step on a batch of caption images (no parameters of its own).

    Masks come from the automatic mask engine (point grid, IoU and stability filters,
    containment-aware NMS), the same procedure that produces the masks classified at
    open-vocabulary inference, so alignment trains on the kind of mask it will name; NMS also
    removes near-duplicates that would compete for one entity, and the filters keep junk masks
    from stealing matches. Only the ``max_masks`` highest-scored masks are kept.
    """

    @configurable
    def __init__(
        self,
        *,
        matcher: MaskTextMatcher,
        entity_embedder: EntityEmbedder,
        mask_generator: amg.AutomaticMaskGenerationEngine,
        ensemble_sizes: Sequence[int] = (),
        max_masks: int = 100,
        loss_weight: float = 1.0,
        contrastive_weight: float = 0.0,
        contrastive_logit_scale: float = 0.0,
    ) -> None:
        """
        Args:
            matcher: Cost, Hungarian matching and threshold.
            entity_embedder: Entity phrases -> text embeddings (cached).
            mask_generator: Point-grid mask generation for caption images.
            ensemble_sizes: Input sides of the multi-scale ensemble (Eq. 7); empty = only the
                training input size (no ensemble).
            max_masks: At most this many masks per image (highest predicted IoU); 0 = all.
            loss_weight: Weight of Eq. 8's loss (release: 1).
            contrastive_weight: Weight of the contrastive term (beyond the paper; 0 = off).
            contrastive_logit_scale: Its temperature; ``<= 0`` uses CLIP's learned one.
        """
        if max_masks < 0 or loss_weight < 0 or contrastive_weight < 0:
            raise ValueError(
                "ALIGNMENT.MASKS.MAX_MASKS, ALIGNMENT.LOSS_WEIGHT and "
                f"ALIGNMENT.CONTRASTIVE_WEIGHT must be >= 0, got {max_masks}, {loss_weight}, "
                f"{contrastive_weight}"
            )
        if loss_weight == 0 and contrastive_weight == 0:
            raise ValueError("ALIGNMENT.LOSS_WEIGHT and ALIGNMENT.CONTRASTIVE_WEIGHT are both 0")
        self.matcher = matcher
        self.entity_embedder = entity_embedder
        self.mask_generator = mask_generator
        self.ensemble_sizes = tuple(int(s) for s in ensemble_sizes)
        self.max_masks = int(max_masks)
        self.loss_weight = float(loss_weight)
        self.contrastive_weight = float(contrastive_weight)
        self.contrastive_logit_scale = float(contrastive_logit_scale)

    @classmethod
    def from_config(cls, cfg) -> dict:
        a = cfg.MODEL.UNIOVSEG.ALIGNMENT
        engine_args = amg.AutomaticMaskGenerationEngine.from_config(cfg)
        engine_args.update(
            points_per_side=a.MASKS.POINTS_PER_SIDE,
            pred_iou_thresh=a.MASKS.PRED_IOU_THRESH,
            stability_score_thresh=a.MASKS.STABILITY_SCORE_THRESH,
            min_region_area=0,
        )
        return {
            "matcher": MaskTextMatcher(cfg),
            # The classifier's templates: entity targets and class embeddings made alike.
            "entity_embedder": EntityEmbedder(
                templates=cfg.MODEL.UNIOVSEG.OPEN_VOCAB.TEMPLATES, cache_size=a.TEXT_CACHE_SIZE
            ),
            "mask_generator": amg.AutomaticMaskGenerationEngine(**engine_args),
            "ensemble_sizes": tuple(a.ENSEMBLE_SIZES),
            "max_masks": a.MASKS.MAX_MASKS,
            "loss_weight": a.LOSS_WEIGHT,
            "contrastive_weight": a.CONTRASTIVE_WEIGHT,
            "contrastive_logit_scale": a.CONTRASTIVE_LOGIT_SCALE,
        }

    @torch.no_grad()
    def generate_masks(
        self,
        pixel_features: PixelDecoderOutput,
        decode_points: DecodePointsFn,
        *,
        valid_sizes: Sequence[tuple[int, int]],
        input_size: tuple[int, int],
    ) -> list[torch.Tensor]:
        """Point-grid masks of every image, as float {0, 1} [K_b, h, w] at the decoder's mask
        stride over the padded input frame (K_b may be 0)."""
        masks = []
        for b, valid in enumerate(valid_sizes):
            features_b = PixelDecoderOutput(
                pixel_features.mask_features[b : b + 1],
                [f[b : b + 1] for f in pixel_features.multi_scale_features],
            )
            stride = input_size[0] / pixel_features.mask_features.shape[-2]
            # Only the low-res logits are used: ask for "original" masks at that resolution
            # so the engine does not build full-size copies.
            lowres_valid = (max(1, round(valid[0] / stride)), max(1, round(valid[1] / stride)))
            result = self.mask_generator.generate(
                lambda coords, f=features_b: decode_points(f, coords),
                valid_size=tuple(valid),
                input_size=tuple(input_size),
                original_size=lowres_valid,
                device=pixel_features.mask_features.device,
            )
            logits = result.mask_logits_lowres
            if self.max_masks:
                logits = logits[: self.max_masks]  # sorted by decreasing predicted IoU
            masks.append((logits > 0).to(pixel_features.mask_features.dtype))
        return masks

    def __call__(
        self,
        *,
        backbone,
        images: torch.Tensor,
        clip_dense: torch.Tensor,
        pixel_features: PixelDecoderOutput,
        valid_sizes: Sequence[tuple[int, int]],
        entities: Sequence[Sequence[str]],
        decode_points: DecodePointsFn,
        adapter,
    ) -> dict[str, torch.Tensor]:
        """Alignment loss of a batch of caption images.

        Args:
            backbone: The frozen CLIP backbone.
            images: Normalised [B, 3, S, S] padded inputs.
            clip_dense: [B, C, S / 32, S / 32] ``clip_vis_dense`` of ``images`` at size S.
            pixel_features: The pixel decoder's output for ``images`` (no gradient needed).
            valid_sizes: (h, w) of each image's unpadded region.
            entities: Each image's entity phrases (may be empty).
            decode_points: Runs the prompt decoder on one image's features (see
                :data:`DecodePointsFn`).
            adapter: The :class:`MultiScaleFeatureAdapter` being trained.

        Returns:
            ``{"loss_align": scalar}``: ``loss_weight`` x the mean of Eq. 8 over the batch's
            matched pairs; an exact 0 connected to the adapter when there is no pair. With a
            contrastive weight, also ``"loss_align_contrastive"``: its weight x the mean of
            :func:`contrastive_alignment_loss` over the same pairs.
        """
        input_size = tuple(images.shape[-2:])
        masks = self.generate_masks(
            pixel_features, decode_points, valid_sizes=valid_sizes, input_size=input_size
        )
        sizes = self.ensemble_sizes or (input_size[-1],)
        flat = [e for ents in entities for e in ents]
        entity_table = dict(zip(flat, self.entity_embedder(backbone, flat), strict=True))
        adapter_inputs = adapter.select_features(pixel_features)

        has_work = any(len(m) and len(e) for m, e in zip(masks, entities, strict=True))
        dense_maps = (
            clip_dense_at_sizes(backbone, images, sizes, known={input_size[-1]: clip_dense})
            if has_work
            else []
        )
        phrase_rows = {e: i for i, e in enumerate(entity_table)}
        losses, adapted_all, targets_all, num_pairs = [], [], [], 0
        for b, (masks_b, ents_b) in enumerate(zip(masks, entities, strict=True)):
            if len(masks_b) == 0 or len(ents_b) == 0:
                continue
            text = torch.stack([entity_table[e] for e in ents_b])
            with torch.no_grad():
                regions = torch.cat(
                    [
                        embed_regions(backbone, dense[b : b + 1], masks_b[None])
                        for dense in dense_maps
                    ]
                )  # [S, K, D]
            match = self.matcher(regions, text)
            if len(match) == 0:
                continue
            adapted = embed_regions(
                backbone,
                clip_dense[b : b + 1],
                masks_b[match.region_indices][None],
                adapter=adapter,
                adapter_features={n: f[b : b + 1] for n, f in adapter_inputs.items()},
            )[0]
            losses.append(alignment_loss(adapted, text[match.entity_indices]))
            adapted_all.append(adapted)
            targets_all.extend(phrase_rows[ents_b[k]] for k in match.entity_indices.tolist())
            num_pairs += len(match)
        _log_stats(masks, entities, num_pairs)
        if not losses:
            # No pair in the batch: an exact zero that still reaches every adapter parameter,
            # so DDP's gradient all-reduce stays in step across processes.
            zero = sum(p.sum() * 0.0 for p in adapter.parameters())
            out = {"loss_align": zero}
            if self.contrastive_weight:
                out["loss_align_contrastive"] = zero
            return out
        out = {"loss_align": self.loss_weight * torch.cat(losses).mean()}
        if self.contrastive_weight:
            scale = self.contrastive_logit_scale
            contrastive = contrastive_alignment_loss(
                torch.cat(adapted_all),
                torch.stack(list(entity_table.values())),
                torch.as_tensor(targets_all, dtype=torch.long, device=adapted_all[0].device),
                logit_scale=scale if scale > 0 else backbone.logit_scale,
            )
            out["loss_align_contrastive"] = self.contrastive_weight * contrastive.mean()
        return out


def _log_stats(masks: list[torch.Tensor], entities: Sequence[Sequence[str]], pairs: int) -> None:
    from detectron2.utils.events import get_event_storage, has_event_storage

    if not has_event_storage():
        return
    storage = get_event_storage()
    num = max(1, len(masks))
    storage.put_scalar("align/masks_per_image", sum(len(m) for m in masks) / num)
    storage.put_scalar("align/entities_per_image", sum(len(e) for e in entities) / num)
    storage.put_scalar("align/pairs_per_image", pairs / num)
