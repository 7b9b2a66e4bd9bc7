"""Mask-text alignment pieces on hand-made cases: Eq. 6/7 costs, Hungarian pairs, threshold,
Eq. 8 loss, region pooling, the adapter's identity start, the entity-embedding cache."""

import math

import pytest
import torch
import torch.nn.functional as F

from uniovseg.modeling.alignment import (
    MaskTextMatcher,
    alignment_cost,
    alignment_loss,
    match_regions_to_entities,
)
from uniovseg.modeling.clip_backbone import CLIPConvNeXtBackbone
from uniovseg.modeling.entity_embedding import EntityEmbedder
from uniovseg.modeling.feature_adapter import MultiScaleFeatureAdapter
from uniovseg.modeling.region_embedding import (
    embed_regions,
    mask_pool,
    project_pooled,
    resize_masks,
)


def _embeds_with_cosines(cos: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit region embeddings [K, D] and orthonormal entity embeddings [E, D] whose cosine
    matrix is ``cos`` (each row must have norm <= 1: the rest goes to an extra axis)."""
    cos_t = torch.tensor(cos, dtype=torch.float64)
    num_regions, num_entities = cos_t.shape
    entities = torch.eye(num_entities, num_entities + 1, dtype=torch.float64)
    rest = (1.0 - (cos_t**2).sum(dim=1)).clamp(min=0).sqrt()
    regions = torch.cat([cos_t, rest[:, None]], dim=1)
    return regions.float(), entities.float()


def test_eq6_cost_is_the_softmax_over_entities_of_the_distance():
    regions, entities = _embeds_with_cosines([[1.0, 0.0], [0.0, 1.0]])
    cost = alignment_cost(regions, entities, softmax_weight=1.0, distance_weight=0.0)
    low, high = 1 / (1 + math.e), math.e / (1 + math.e)  # softmax([0, 1])
    torch.testing.assert_close(cost.cost, torch.tensor([[low, high], [high, low]]))
    torch.testing.assert_close(cost.similarity, torch.eye(2), atol=1e-6, rtol=0)
    match = match_regions_to_entities(cost)
    assert match.region_indices.tolist() == [0, 1] and match.entity_indices.tolist() == [0, 1]


def test_eq6_sign_lower_cost_for_more_similar_entities():
    # Within a row the cost grows with the distance: the paper's sign suits a minimising matcher.
    regions, entities = _embeds_with_cosines([[0.9, 0.5, 0.1], [0.2, 0.6, 0.3]])
    cost = alignment_cost(regions, entities, distance_weight=0.0).cost
    assert cost[0, 0] < cost[0, 1] < cost[0, 2]
    assert cost[1, 1] < cost[1, 2] < cost[1, 0]
    torch.testing.assert_close(cost.sum(dim=1), torch.ones(2))


def test_eq6_discounts_a_mask_similar_to_every_entity():
    # Region 0 (e.g. the whole image) is close to both entities; regions 1 and 2 each to one.
    regions, entities = _embeds_with_cosines([[0.68, 0.68], [0.6, 0.1], [0.1, 0.6]])
    paper = MaskTextMatcher(softmax_weight=1.0, distance_weight=0.0)(regions, entities)
    assert paper.region_indices.tolist() == [1, 2] and paper.entity_indices.tolist() == [0, 1]
    # The plain distance prefers the generic region for one of the entities.
    distance = MaskTextMatcher(softmax_weight=0.0, distance_weight=1.0)(regions, entities)
    assert 0 in distance.region_indices.tolist()


def test_single_entity_ties_are_broken_by_the_distance():
    regions, entities = _embeds_with_cosines([[0.2], [0.9], [0.5]])
    cost = alignment_cost(regions, entities, softmax_weight=1.0, distance_weight=0.0)
    assert torch.all(cost.cost == 1.0)  # Eq. 6 alone cannot choose with one entity
    match = MaskTextMatcher()(regions, entities)  # defaults: + 0.001 x distance
    assert match.region_indices.tolist() == [1] and match.entity_indices.tolist() == [0]


def test_eq7_averages_the_cost_matrices_of_the_scales():
    small, entities = _embeds_with_cosines([[0.9, 0.0], [0.0, 0.9]])  # favours the diagonal
    large, _ = _embeds_with_cosines([[0.0, 0.3], [0.3, 0.0]])  # weakly favours the other one
    stacked = torch.stack([small, large])
    cost = alignment_cost(stacked, entities, distance_weight=0.5)
    per_scale = [alignment_cost(x, entities, distance_weight=0.5).cost for x in (small, large)]
    torch.testing.assert_close(cost.cost, (per_scale[0] + per_scale[1]) / 2)
    torch.testing.assert_close(cost.similarity, torch.tensor([[0.45, 0.15], [0.15, 0.45]]))
    match = match_regions_to_entities(cost)
    assert match.entity_indices.tolist() == [0, 1]
    only_large = match_regions_to_entities(alignment_cost(large, entities, distance_weight=0.5))
    assert only_large.entity_indices.tolist() == [1, 0]


def test_hungarian_gives_min_k_e_pairs_and_the_threshold_drops_weak_ones():
    regions, entities = _embeds_with_cosines(
        [[0.1, 0.0, 0.0], [0.8, 0.1, 0.0], [0.0, 0.0, 0.3], [0.0, 0.6, 0.0]]
    )
    match = MaskTextMatcher()(regions, entities)
    assert match.region_indices.tolist() == [1, 2, 3]
    assert match.entity_indices.tolist() == [0, 2, 1]
    torch.testing.assert_close(match.similarity, torch.tensor([0.8, 0.3, 0.6]))
    strict = MaskTextMatcher(min_similarity=0.5)(regions, entities)
    assert strict.region_indices.tolist() == [1, 3] and strict.entity_indices.tolist() == [0, 1]
    fewer_masks = MaskTextMatcher()(regions[:2], entities)
    assert len(fewer_masks) == 2


def test_empty_inputs_and_invalid_costs():
    regions, entities = _embeds_with_cosines([[0.5, 0.1]])
    assert len(MaskTextMatcher()(regions[:0], entities)) == 0
    assert len(MaskTextMatcher()(regions, entities[:0])) == 0
    bad = alignment_cost(regions, entities)._replace(cost=torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        match_regions_to_entities(bad)
    with pytest.raises(ValueError, match="not both 0"):
        MaskTextMatcher(softmax_weight=0.0, distance_weight=0.0)
    with pytest.raises(ValueError, match="MIN_SIMILARITY"):
        MaskTextMatcher(min_similarity=1.5)


def test_eq8_loss():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    b = torch.tensor([[5.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    torch.testing.assert_close(alignment_loss(a, b), torch.tensor([0.0, 1.0, 2.0]))


def test_area_mask_resize_and_pooling():
    masks = torch.zeros(1, 2, 8, 8)
    masks[0, 0, :4, :4] = 1.0  # exactly the top-left feature cell
    masks[0, 1, 0, 0] = 1.0  # one pixel: a quarter... of a 4x4 cell = 1/16
    small = resize_masks(masks, (2, 2))
    torch.testing.assert_close(small[0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(small[0, 1], torch.tensor([[1 / 16, 0.0], [0.0, 0.0]]))
    features = torch.arange(8.0).reshape(1, 2, 2, 2)  # channel 0: 0..3, channel 1: 4..7
    pooled = mask_pool(features, small)
    torch.testing.assert_close(pooled[0], torch.tensor([[0.0, 4.0], [0.0, 4.0]]))
    empty = mask_pool(features, torch.zeros(1, 1, 2, 2))
    assert torch.all(empty == 0)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return CLIPConvNeXtBackbone(model_name="uniovseg_tiny_convnext", pretrained="")


def test_projection_matches_the_backbone_region_embedder(backbone):
    dense = backbone(torch.randn(1, 3, 128, 128))["clip_vis_dense"]
    masks = (torch.rand(1, 5, 4, 4) > 0.5).float()
    ours = project_pooled(backbone, mask_pool(dense, masks))
    torch.testing.assert_close(ours, backbone.embed_regions(dense, masks))


def _adapter(dense_channels: int) -> MultiScaleFeatureAdapter:
    return MultiScaleFeatureAdapter(
        in_channels={"multi_scale_0": 16, "mask_features": 8}, out_channels=dense_channels, rank=3
    )


def test_adapter_starts_as_identity_and_pools_like_the_full_residual(backbone):
    channels = backbone.output_shape()["clip_vis_dense"].channels
    dense = backbone(torch.randn(2, 3, 128, 128))["clip_vis_dense"]  # [2, C, 4, 4]
    features = {
        "multi_scale_0": torch.randn(2, 16, 4, 4),
        "mask_features": torch.randn(2, 8, 32, 32),
    }
    masks = (torch.rand(2, 6, 32, 32) > 0.6).float()
    masks[1, 2] = 0.0  # an empty mask
    adapter = _adapter(channels)
    plain = embed_regions(backbone, dense, masks)
    adapted = embed_regions(backbone, dense, masks, adapter=adapter, adapter_features=features)
    assert torch.equal(plain, adapted)  # B = 0: r' == r exactly
    assert torch.isfinite(adapted).all()

    with torch.no_grad():
        for lora in adapter.adapters.values():
            lora.up.weight.normal_()
    # B after pooling == pooling the per-pixel residual B(act(A x)), scale by scale.
    expected = 0
    for name, lora in adapter.adapters.items():
        residual = torch.einsum("bchw,dc->bdhw", lora.hidden(features[name]), lora.up.weight)
        expected = expected + mask_pool(residual, resize_masks(masks, residual.shape[-2:]))
    torch.testing.assert_close(adapter(features, masks), expected, atol=1e-5, rtol=1e-5)
    changed = embed_regions(backbone, dense, masks, adapter=adapter, adapter_features=features)
    assert not torch.allclose(changed, plain)


def test_adapter_validation():
    with pytest.raises(ValueError, match="RANK"):
        MultiScaleFeatureAdapter(in_channels={"mask_features": 8}, out_channels=4, rank=0)
    with pytest.raises(ValueError, match="IN_FEATURES"):
        MultiScaleFeatureAdapter(in_channels={}, out_channels=4)
    with pytest.raises(ValueError, match="ACTIVATION"):
        MultiScaleFeatureAdapter(in_channels={"mask_features": 8}, out_channels=4, activation="x")


def test_entity_embeddings_average_templates_and_are_cached(backbone):
    calls = []
    original = backbone.encode_text

    def counting(texts, normalize=True):
        calls.append(list(texts))
        return original(texts, normalize=normalize)

    backbone.encode_text = counting
    try:
        embedder = EntityEmbedder(templates=("a photo of a {}.", "a {}"), cache_size=2)
        first = embedder(backbone, ["dog", "cat", "dog"])
        assert first.shape == (3, backbone.embed_dim) and torch.equal(first[0], first[2])
        assert calls == [["a photo of a dog.", "a dog", "a photo of a cat.", "a cat"]]
        manual = F.normalize(original(["a photo of a dog.", "a dog"]).mean(0), dim=-1)
        torch.testing.assert_close(first[0], manual)
        torch.testing.assert_close(first.norm(dim=-1), torch.ones(3))

        again = embedder(backbone, ["cat"])  # cached: no new text-tower call
        assert len(calls) == 1 and torch.equal(again[0], first[1])
        embedder(backbone, ["car"])  # LRU: "dog" was used least recently and is evicted
        assert len(embedder) == 2
        embedder(backbone, ["cat", "dog"])
        assert calls[-1] == ["a photo of a dog.", "a dog"]

        # Loading weights into the text tower invalidates the cache.
        state = {k: v.clone() for k, v in backbone.clip_model.state_dict().items()}
        backbone.clip_model.load_state_dict(state)
        embedder(backbone, ["cat"])
        assert calls[-1] == ["a photo of a cat.", "a cat"]
        assert embedder(backbone, []).shape == (0, backbone.embed_dim)
    finally:
        del backbone.encode_text
