"""TextClassifier on the tiny random-weight CLIP: prompts, synonyms, temperature, cache, memory."""

import logging
import math
import os
import pathlib
import pickle

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from uniovseg.config import add_uniovseg_config
from uniovseg.modeling.clip_backbone import CLIPConvNeXtBackbone
from uniovseg.modeling.text_classifier import (
    VILD_TEMPLATES,
    TextClassifier,
    resolve_templates,
)

TINY = "uniovseg_tiny_convnext"
TWO_TEMPLATES = ("a photo of a {}.", "There is a {} in the scene")


def _backbone(seed: int = 0) -> CLIPConvNeXtBackbone:
    torch.manual_seed(seed)
    return CLIPConvNeXtBackbone(model_name=TINY, pretrained="")


@pytest.fixture(scope="module")
def backbone() -> CLIPConvNeXtBackbone:
    return _backbone()


class _SpyEncoder:
    """Wraps an encoder and records the size of every encode_text call."""

    def __init__(self, inner):
        self.inner = inner
        self.clip_model = inner.clip_model
        self.calls: list[int] = []

    def encode_text(self, texts, *, normalize=True):
        self.calls.append(len(texts))
        return self.inner.encode_text(texts, normalize=normalize)

    @property
    def logit_scale(self):
        return self.inner.logit_scale


def _regions(num: int, dim: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(num, dim, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- templates
def test_vild_templates_are_the_fourteen():
    assert len(VILD_TEMPLATES) == 14
    assert VILD_TEMPLATES[0] == "a photo of a {}."
    assert VILD_TEMPLATES[1] == "This is a photo of a {}"
    assert VILD_TEMPLATES[-1] == "There is a large {} in the scene."
    assert resolve_templates("vild") == VILD_TEMPLATES
    assert resolve_templates(["{} here"]) == ("{} here",)


@pytest.mark.parametrize("bad", ["imagenet", [], ["no placeholder"], ["{} and {}"]])
def test_bad_templates_are_rejected(bad):
    with pytest.raises(ValueError, match="template"):
        resolve_templates(bad)


# ---------------------------------------------------------------------------- scores
def test_logits_match_a_hand_computation(backbone):
    classifier = TextClassifier(
        text_encoder=backbone, vocabulary="cat, kitty; dog", templates=TWO_TEMPLATES
    )
    regions = _regions(4, backbone.embed_dim)

    def synonym_embed(name):
        prompts = [t.format(name) for t in TWO_TEMPLATES]
        return F.normalize(backbone.encode_text(prompts, normalize=True).mean(0), dim=-1)

    text = torch.stack([synonym_embed(n) for n in ("cat", "kitty", "dog")])
    cosine = F.normalize(regions, dim=-1) @ text.t()
    scale = backbone.clip_model.logit_scale.exp().clamp(max=100)
    expected = scale * torch.stack([cosine[:, :2].max(1).values, cosine[:, 2]], dim=1)
    torch.testing.assert_close(classifier.classify(regions), expected, rtol=1e-5, atol=1e-5)


def test_class_score_is_the_best_synonyms(backbone):
    classifier = TextClassifier(text_encoder=backbone, templates="vild")
    regions = _regions(6, backbone.embed_dim)
    both = classifier.classify(regions, ["cat, kitty, feline"])[:, 0]
    singles = classifier.classify(regions, ["cat", "kitty", "feline"])
    torch.testing.assert_close(both, singles.max(dim=1).values)


def test_embeddings_are_unit_template_averages(backbone):
    classifier = TextClassifier(text_encoder=backbone, templates=TWO_TEMPLATES)
    embeds, owners = classifier.class_embeddings(["sky", "dog, puppy"])
    assert embeds.shape == (3, backbone.embed_dim)
    assert owners.tolist() == [0, 1, 1]
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(3))


def test_temperature_is_clips_clamped_or_fixed():
    backbone = _backbone()
    regions = _regions(3, backbone.embed_dim)
    clip_scale = TextClassifier(text_encoder=backbone, vocabulary="a; b")
    fixed = TextClassifier(text_encoder=backbone, vocabulary="a; b", logit_scale=50.0)
    ratio = fixed.classify(regions) / clip_scale.classify(regions)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 50.0 / (1 / 0.07)), rtol=1e-4, atol=0)
    with torch.no_grad():
        backbone.clip_model.logit_scale.fill_(math.log(1000.0))  # beyond CLIP's clamp
    assert float(clip_scale.logit_scale) == pytest.approx(100.0)


def test_shapes_empty_batch_and_gradient(backbone):
    classifier = TextClassifier(text_encoder=backbone, vocabulary="cat; dog; sky")
    assert classifier.classify(torch.zeros(0, backbone.embed_dim)).shape == (0, 3)
    batched = _regions(10, backbone.embed_dim).reshape(2, 5, -1)
    assert classifier.classify(batched).shape == (2, 5, 3)
    regions = _regions(5, backbone.embed_dim).requires_grad_(True)
    classifier.classify(regions).sum().backward()
    assert regions.grad is not None and regions.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="embedding size"):
        classifier.classify(torch.zeros(2, backbone.embed_dim + 1))


def test_predict_without_void_is_a_softmax(backbone):
    classifier = TextClassifier(text_encoder=backbone, vocabulary="cat; dog; sky")
    result = classifier.predict(_regions(4, backbone.embed_dim))
    assert result.void_probs is None
    torch.testing.assert_close(result.probs, result.logits.softmax(-1))


def test_void_prompt_follows_fcclips_rule(backbone):
    classifier = TextClassifier(
        text_encoder=backbone, vocabulary="cat; dog", void_prompt="background, nothing"
    )
    regions = _regions(5, backbone.embed_dim)
    result = classifier.predict(regions)
    void_logit = TextClassifier(text_encoder=backbone).classify(regions, ["background, nothing"])
    expected_void = torch.cat([result.logits, void_logit], dim=1).softmax(-1)[:, -1]
    torch.testing.assert_close(result.void_probs, expected_void)
    torch.testing.assert_close(
        result.probs, result.logits.softmax(-1) * (1 - expected_void[:, None])
    )
    torch.testing.assert_close(result.probs.sum(-1) + result.void_probs, torch.ones(5))


# ---------------------------------------------------------------------------- vocabulary
def test_empty_vocabulary_is_an_error(backbone):
    with pytest.raises(ValueError, match="empty"):
        TextClassifier(text_encoder=backbone, vocabulary=" ; ")
    classifier = TextClassifier(text_encoder=backbone)
    with pytest.raises(ValueError, match="no vocabulary"):
        classifier.classify(_regions(2, backbone.embed_dim))


def test_duplicate_classes_are_dropped_with_a_warning(backbone):
    with pytest.warns(UserWarning, match="duplicate.*'dog'"):
        classifier = TextClassifier(text_encoder=backbone, vocabulary="cat; dog; dog")
    assert classifier.vocabulary == ["cat", "dog"]
    assert classifier.classify(_regions(2, backbone.embed_dim)).shape == (2, 2)


def test_packaged_vocabulary_by_name(backbone):
    classifier = TextClassifier(text_encoder=backbone, vocabulary="cityscapes_19", templates="name")
    assert classifier.classify(_regions(2, backbone.embed_dim)).shape == (2, 19)


# ---------------------------------------------------------------------------- cache
def test_cache_hits_misses_and_rebuild_on_vocabulary_change(backbone):
    spy = _SpyEncoder(backbone)
    classifier = TextClassifier(text_encoder=spy, templates=TWO_TEMPLATES)
    regions = _regions(3, backbone.embed_dim)
    first = classifier.classify(regions, "cat; dog")
    calls = len(spy.calls)
    again = classifier.classify(regions, "cat; dog")
    assert len(spy.calls) == calls  # no re-encoding
    assert classifier.cache_info() == {"hits": 1, "misses": 1, "size": 1}
    torch.testing.assert_close(first, again)
    assert classifier.classify(regions, "cat; dog; sky").shape == (3, 3)
    assert len(spy.calls) > calls
    assert classifier.cache_info()["misses"] == 2
    classifier.classify(regions, "cat; dog")
    assert classifier.cache_info() == {"hits": 2, "misses": 2, "size": 2}


def test_cache_key_includes_templates(backbone):
    classifier = TextClassifier(text_encoder=backbone, vocabulary="cat; dog", templates="photo")
    classifier.classify(_regions(2, backbone.embed_dim))
    classifier.templates = resolve_templates("name")
    classifier.classify(_regions(2, backbone.embed_dim))
    assert classifier.cache_info()["misses"] == 2


def test_cache_is_rebuilt_when_text_weights_change():
    backbone = _backbone()
    classifier = TextClassifier(text_encoder=backbone, vocabulary="cat; dog", templates="photo")
    regions = _regions(3, backbone.embed_dim)
    before = classifier.classify(regions)
    state = {k: v + 0.01 for k, v in backbone.clip_model.state_dict().items()}
    backbone.clip_model.load_state_dict(state)  # in-place copy_, as a checkpoint load does
    after = classifier.classify(regions)
    assert classifier.cache_info()["misses"] == 2
    assert not torch.allclose(before, after)


def test_lru_eviction(backbone):
    classifier = TextClassifier(text_encoder=backbone, templates="name", max_cached_vocabularies=2)
    regions = _regions(1, backbone.embed_dim)
    for vocabulary in ("a;", "b;", "c;", "a;"):
        classifier.classify(regions, vocabulary)
    assert classifier.cache_info() == {"hits": 0, "misses": 4, "size": 2}


def test_disk_cache_round_trip(tmp_path):
    backbone = _backbone()
    regions = _regions(3, backbone.embed_dim)
    writer = TextClassifier(text_encoder=backbone, templates=TWO_TEMPLATES, cache_dir=str(tmp_path))
    expected = writer.classify(regions, "cat, kitty; dog")
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".pt")

    spy = _SpyEncoder(backbone)
    reader = TextClassifier(text_encoder=spy, templates=TWO_TEMPLATES, cache_dir=str(tmp_path))
    torch.testing.assert_close(reader.classify(regions, "cat, kitty; dog"), expected)
    assert spy.calls == []  # read from disk, nothing encoded

    other = _backbone(seed=1)  # other weights: another file
    TextClassifier(text_encoder=other, templates=TWO_TEMPLATES, cache_dir=str(tmp_path)).classify(
        regions, "cat, kitty; dog"
    )
    assert len(os.listdir(tmp_path)) == 2


class _Hostile:
    """Unpickling it creates ``marker``: proof that code ran while reading a cache file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _damage_truncated(path: str, marker: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _damage_hostile_torch_save(path: str, marker: str) -> None:
    torch.save({"embeds": _Hostile(marker), "synonym_to_class": 0, "num_classes": 2}, path)


def _damage_hostile_raw_pickle(path: str, marker: str) -> None:
    with open(path, "wb") as f:
        pickle.dump(_Hostile(marker), f, protocol=2)


@pytest.mark.parametrize(
    "damage", [_damage_truncated, _damage_hostile_torch_save, _damage_hostile_raw_pickle]
)
def test_damaged_disk_cache_is_ignored_rebuilt_and_replaced(backbone, tmp_path, caplog, damage):
    cache_dir, marker = tmp_path / "cache", str(tmp_path / "code_ran")
    regions = _regions(3, backbone.embed_dim)
    vocabulary = "cat, kitty; dog"
    writer = TextClassifier(
        text_encoder=backbone, templates=TWO_TEMPLATES, cache_dir=str(cache_dir)
    )
    expected = writer.classify(regions, vocabulary)
    (name,) = os.listdir(cache_dir)
    path = str(cache_dir / name)
    intact = torch.load(path, weights_only=True)
    damage(path, marker)

    spy = _SpyEncoder(backbone)
    reader = TextClassifier(text_encoder=spy, templates=TWO_TEMPLATES, cache_dir=str(cache_dir))
    with caplog.at_level(logging.WARNING, logger="uniovseg.modeling.text_classifier"):
        torch.testing.assert_close(reader.classify(regions, vocabulary), expected)
    assert not os.path.exists(marker)  # no code ran
    assert spy.calls  # recomputed
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and path in warnings[0].getMessage()
    assert os.listdir(cache_dir) == [name]  # replaced in place, no temporary file left
    rewritten = torch.load(path, weights_only=True)
    torch.testing.assert_close(rewritten["embeds"], intact["embeds"])
    assert torch.equal(rewritten["synonym_to_class"], intact["synonym_to_class"])

    again = _SpyEncoder(backbone)  # the rewritten file is read back without encoding
    TextClassifier(text_encoder=again, templates=TWO_TEMPLATES, cache_dir=str(cache_dir)).classify(
        regions, vocabulary
    )
    assert again.calls == []


# ---------------------------------------------------------------------------- chunking, memory
@pytest.mark.parametrize("chunk", [1, 5, 14, 10_000])
def test_chunking_does_not_change_embeddings(backbone, chunk):
    vocabulary = "cat, kitty; dog, puppy, hound; sky; road, street"
    reference = TextClassifier(text_encoder=backbone, templates="vild", prompt_chunk_size=1000)
    spy = _SpyEncoder(backbone)
    chunked = TextClassifier(text_encoder=spy, templates="vild", prompt_chunk_size=chunk)
    torch.testing.assert_close(
        chunked.class_embeddings(vocabulary)[0],
        reference.class_embeddings(vocabulary)[0],
        rtol=1e-5,
        atol=1e-5,
    )
    # Whole synonyms per call: at most max(chunk, one synonym's 14 prompts).
    assert max(spy.calls) <= max(chunk, len(VILD_TEMPLATES))
    assert sum(spy.calls) == 8 * len(VILD_TEMPLATES)


def test_thousands_of_classes_build_in_bounded_batches(backbone):
    num_classes, chunk = 3000, 256
    spy = _SpyEncoder(backbone)
    classifier = TextClassifier(text_encoder=spy, templates="name", prompt_chunk_size=chunk)
    vocabulary = [f"object number {i}" for i in range(num_classes)]
    logits = classifier.classify(_regions(4, backbone.embed_dim), vocabulary)
    assert logits.shape == (4, num_classes)
    assert max(spy.calls) <= chunk and sum(spy.calls) == num_classes
    assert len(spy.calls) == math.ceil(num_classes / chunk)
    embeds, _ = classifier.class_embeddings(vocabulary)
    assert embeds.shape == (num_classes, backbone.embed_dim)  # one row per synonym, no templates


# ---------------------------------------------------------------------------- config
def test_from_config(backbone):
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    cfg.MODEL.UNIOVSEG.OPEN_VOCAB.VOCABULARY = "cat; dog, puppy"
    cfg.MODEL.UNIOVSEG.OPEN_VOCAB.TEMPLATES = "photo"
    cfg.MODEL.UNIOVSEG.OPEN_VOCAB.LOGIT_SCALE = 100.0
    cfg.MODEL.UNIOVSEG.CLIP.TEXT_CHUNK_SIZE = 7
    classifier = TextClassifier(cfg, text_encoder=backbone)
    assert classifier.vocabulary == ["cat", "dog, puppy"]
    assert classifier.templates == ("a photo of a {}.",)
    assert classifier.prompt_chunk_size == 7
    assert float(classifier.logit_scale) == 100.0
    assert classifier.void_entry == "" and classifier.cache_dir == ""
