"""Zero-shot classifier of region embeddings from class names (paper Sec. 3.3, inference).

For a vocabulary (class entries with comma-separated synonyms) every synonym is put into every
prompt template, the prompts are embedded by the CLIP text tower and L2-normalised, the
embeddings of one synonym are averaged over the templates and re-normalised (FC-CLIP's recipe,
which the paper follows). A region's logit for a class is CLIP's temperature times the best
cosine similarity over that class's synonyms.

The per-synonym embeddings are computed once per vocabulary and cached, keyed by the class
entries, the templates and the identity of the text tower's weights (so loading a checkpoint
into the same model rebuilds them). Prompts are encoded a bounded number at a time, whole
synonyms per batch, so even thousands of classes need memory for one batch of prompt embeddings
plus the result ``[S, D]`` (S synonyms), never ``[S x templates, D]``. An optional on-disk cache
keyed by a hash of the text tower's weights skips the encoding across runs (worth it on CPU:
ADE20K-847 is ~19k prompts; :mod:`uniovseg.modeling.text_embedding_cache`).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from detectron2.config import configurable

from uniovseg.data.vocabulary import class_synonyms, resolve_vocabulary

from .text_embedding_cache import ClassEmbeddings, TextEmbeddingDiskCache, text_weights_identity

__all__ = [
    "TEMPLATE_SETS",
    "VILD_TEMPLATES",
    "RegionClassification",
    "TextClassifier",
    "resolve_templates",
]

logger = logging.getLogger(__name__)

# The 14 ViLD prompt templates, as FC-CLIP uses them (some lack a final period: kept verbatim).
VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)
# Named template sets (MODEL.UNIOVSEG.OPEN_VOCAB.TEMPLATES).
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "vild": VILD_TEMPLATES,
    "photo": ("a photo of a {}.",),
    "name": ("{}",),
}
_PLACEHOLDER = "{}"
# CLIP's temperature is clamped at 100, as in CLIP training and FC-CLIP inference.
_MAX_LOGIT_SCALE = 100.0


class TextEncoder(Protocol):
    """What the classifier needs from a text tower (e.g. ``CLIPConvNeXtBackbone``)."""

    def encode_text(self, texts: list[str], *, normalize: bool = True) -> torch.Tensor: ...

    @property
    def logit_scale(self) -> torch.Tensor: ...


class RegionClassification(NamedTuple):
    """Class scores of K regions over a C-class vocabulary.

    Attributes:
        logits: [K, C] float, temperature-scaled best-synonym cosine similarities.
        probs: [K, C] float, ``softmax(logits)``; with a void prompt, multiplied by
            ``1 - void_probs`` (rows then sum to ``1 - void_probs``).
        void_probs: [K] float in [0, 1], the probability of "no class" (FC-CLIP's void
            column), or None when the classifier has no void prompt.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    void_probs: torch.Tensor | None


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A template set name (``"vild"``, ``"photo"``, ``"name"``) or templates -> templates.

    Each template must contain ``{}`` exactly once (where the class name goes).
    """
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(
                f"unknown template set {templates!r}; use one of {sorted(TEMPLATE_SETS)} or a "
                "list of templates with one '{}' each"
            )
        return TEMPLATE_SETS[templates]
    templates = tuple(templates)
    if not templates:
        raise ValueError("at least one prompt template is needed, e.g. ('a photo of a {}.',)")
    for template in templates:
        if not isinstance(template, str) or template.count(_PLACEHOLDER) != 1:
            raise ValueError(
                f"prompt template {template!r} must be a string with exactly one '{{}}' where the "
                "class name goes, e.g. 'a photo of a {}.'"
            )
    return templates


class TextClassifier:
    """Vocabulary -> cached text embeddings -> class logits of region embeddings.

    A plain class, not an ``nn.Module``: it holds a reference to the (frozen) text encoder, so
    it adds no parameters or state-dict entries to the model that owns it.

    Example::

        classifier = TextClassifier(text_encoder=backbone, vocabulary="ade20k_150")
        result = classifier.predict(region_embeds)        # region_embeds: [K, D]
        labels = result.probs.argmax(-1)
    """

    @configurable
    def __init__(
        self,
        *,
        text_encoder: TextEncoder,
        vocabulary: str | Sequence[str] = (),
        templates: str | Sequence[str] = "vild",
        prompt_chunk_size: int = 256,
        logit_scale: float = 0.0,
        void_prompt: str = "",
        cache_dir: str = "",
        max_cached_vocabularies: int = 4,
    ):
        """
        Args:
            text_encoder: Object with ``encode_text(texts, normalize=True) -> [T, D]`` and a
                ``logit_scale`` property (CLIP's temperature, already exp'd), e.g.
                :class:`~uniovseg.modeling.clip_backbone.CLIPConvNeXtBackbone`.
            vocabulary: Default vocabulary (see :func:`~uniovseg.data.vocabulary.
                resolve_vocabulary`: packaged name, file, ``"a; b, c"`` string or list of
                entries); empty: every call must pass one.
            templates: Template set name (``"vild"``: the 14 ViLD templates) or templates.
            prompt_chunk_size: At most this many prompts are encoded per ``encode_text`` call
                (whole synonyms per call; a synonym with more templates than this is one call).
            logit_scale: Temperature multiplying cosine similarities; ``<= 0`` uses the
                encoder's (CLIP's learned one, clamped at 100).
            void_prompt: Entry (comma-separated synonyms) of an extra "no class" prompt, e.g.
                ``"background"``; empty: no void class. See :meth:`predict`.
            cache_dir: Folder for on-disk caches of class embeddings; empty: memory only.
            max_cached_vocabularies: In-memory cache size (least recently used dropped).
        """
        if prompt_chunk_size < 1:
            raise ValueError(f"prompt_chunk_size must be >= 1, got {prompt_chunk_size}")
        if max_cached_vocabularies < 1:
            raise ValueError(f"max_cached_vocabularies must be >= 1, got {max_cached_vocabularies}")
        if not callable(getattr(text_encoder, "encode_text", None)):
            raise ValueError("text_encoder needs an encode_text(texts, normalize=True) method")
        self.text_encoder = text_encoder
        self.templates = resolve_templates(templates)
        self.prompt_chunk_size = int(prompt_chunk_size)
        self._fixed_logit_scale = float(logit_scale)
        self.void_entry = ", ".join(class_synonyms(void_prompt)) if void_prompt else ""
        self.cache_dir = cache_dir
        self._disk_cache = TextEmbeddingDiskCache(cache_dir) if cache_dir else None
        self._max_cached = int(max_cached_vocabularies)
        self._cache: collections.OrderedDict[tuple, ClassEmbeddings] = collections.OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0
        self._vocabulary: list[str] = []
        # "" / () mean "no default vocabulary"; anything else must be a valid one.
        given = bool(vocabulary.strip()) if isinstance(vocabulary, str) else len(vocabulary) > 0
        if given:
            self.set_vocabulary(vocabulary)

    @classmethod
    def from_config(cls, cfg, text_encoder: TextEncoder) -> dict:
        ov = cfg.MODEL.UNIOVSEG.OPEN_VOCAB
        return {
            "text_encoder": text_encoder,
            "vocabulary": ov.VOCABULARY,
            "templates": ov.TEMPLATES,
            "prompt_chunk_size": cfg.MODEL.UNIOVSEG.CLIP.TEXT_CHUNK_SIZE,
            "logit_scale": ov.LOGIT_SCALE,
            "void_prompt": ov.VOID_PROMPT,
            "cache_dir": ov.TEXT_CACHE_DIR,
        }

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocabulary(self) -> list[str]:
        """The default vocabulary's class entries (empty when none was set)."""
        return list(self._vocabulary)

    @property
    def num_classes(self) -> int:
        return len(self._vocabulary)

    def set_vocabulary(self, vocabulary: str | Sequence[str]) -> list[str]:
        """Validates and sets the default vocabulary; its embeddings are built on first use.

        Returns:
            The normalised class entries.
        """
        self._vocabulary = resolve_vocabulary(vocabulary)
        return self.vocabulary

    def _entries(self, vocabulary: str | Sequence[str] | None) -> list[str]:
        if vocabulary is None:
            if not self._vocabulary:
                raise ValueError(
                    "TextClassifier has no vocabulary: pass one (e.g. vocabulary='ade20k_150' or "
                    "'cat; dog, puppy') or call set_vocabulary() first"
                )
            return self._vocabulary
        return resolve_vocabulary(vocabulary)

    # ------------------------------------------------------------------ scores
    @property
    def logit_scale(self) -> torch.Tensor:
        """The temperature multiplying cosine similarities (a float scalar tensor)."""
        if self._fixed_logit_scale > 0:
            return torch.tensor(self._fixed_logit_scale)
        scale = getattr(self.text_encoder, "logit_scale", None)
        if scale is None:
            raise ValueError(
                "the text encoder has no logit_scale; set logit_scale > 0 (e.g. 100.0) explicitly"
            )
        return torch.as_tensor(scale).detach().float().clamp(max=_MAX_LOGIT_SCALE)

    def class_embeddings(
        self, vocabulary: str | Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-synonym embeddings of a vocabulary (cached).

        Returns:
            ``embeds`` [S, D] float32 unit vectors (template-averaged, re-normalised) and
            ``synonym_to_class`` [S] long, the class index of each row.
        """
        weights = self._class_embeddings(self._entries(vocabulary))
        return weights.embeds, weights.synonym_to_class

    def classify(
        self, region_embeds: torch.Tensor, vocabulary: str | Sequence[str] | None = None
    ) -> torch.Tensor:
        """Class logits of region embeddings.

        Args:
            region_embeds: [K, D] (or [..., D]) embeddings in CLIP space, any norm; normalised
                here. Differentiable with respect to them.
            vocabulary: The classes; None uses the default one.

        Returns:
            [K, C] (or [..., C]) logits: for each class, ``logit_scale x`` the maximum cosine
            similarity over its synonyms. ``K = 0`` gives ``[0, C]``.
        """
        weights = self._class_embeddings(self._entries(vocabulary))
        return self._best_synonym_logits(region_embeds, weights)

    def predict(
        self, region_embeds: torch.Tensor, vocabulary: str | Sequence[str] | None = None
    ) -> RegionClassification:
        """Logits, class probabilities and (with a void prompt) no-class probabilities.

        Without a void prompt, ``probs = softmax(logits)`` over the C classes (every region
        gets a class; the paper's inference). With one, FC-CLIP's void handling is applied with
        the void prompt's logit in place of FC-CLIP's learned void embedding:
        ``void = softmax([logits, void_logit])[-1]`` and ``probs = softmax(logits) x (1 - void)``;
        panoptic assembly then drops regions whose void probability beats every class.

        Args:
            region_embeds: [K, D] region embeddings.
            vocabulary: The classes; None uses the default one.
        """
        logits = self.classify(region_embeds, vocabulary)
        probs = logits.softmax(dim=-1)
        if not self.void_entry:
            return RegionClassification(logits, probs, None)
        void_weights = self._class_embeddings([self.void_entry])
        void_logits = self._best_synonym_logits(region_embeds, void_weights)
        void_probs = torch.cat([logits, void_logits], dim=-1).softmax(dim=-1)[..., -1]
        return RegionClassification(logits, probs * (1.0 - void_probs.unsqueeze(-1)), void_probs)

    def _best_synonym_logits(
        self, region_embeds: torch.Tensor, weights: ClassEmbeddings
    ) -> torch.Tensor:
        if region_embeds.dim() < 1 or region_embeds.shape[-1] != weights.embeds.shape[1]:
            raise ValueError(
                f"region_embeds must end with the text embedding size {weights.embeds.shape[1]}, "
                f"got shape {tuple(region_embeds.shape)}"
            )
        lead_shape = region_embeds.shape[:-1]
        regions = F.normalize(region_embeds.reshape(-1, region_embeds.shape[-1]), dim=-1)
        embeds = weights.embeds.to(device=regions.device, dtype=regions.dtype)
        scale = self.logit_scale.to(device=regions.device, dtype=regions.dtype)
        synonym_logits = scale * regions @ embeds.t()  # [K, S]
        index = weights.synonym_to_class.to(regions.device).expand_as(synonym_logits).contiguous()
        init = synonym_logits.new_full((regions.shape[0], weights.num_classes), float("-inf"))
        logits = init.scatter_reduce(1, index, synonym_logits, reduce="amax", include_self=True)
        return logits.reshape(*lead_shape, weights.num_classes)

    # ------------------------------------------------------------------ cache
    def cache_info(self) -> dict[str, int]:
        """``hits``, ``misses`` (embeddings built or read from disk) and ``size`` of the cache."""
        return {"hits": self.cache_hits, "misses": self.cache_misses, "size": len(self._cache)}

    def clear_cache(self) -> None:
        """Drops the in-memory embeddings (not the on-disk ones) and resets the counters."""
        self._cache.clear()
        if self._disk_cache is not None:
            self._disk_cache.forget_weight_hashes()
        self.cache_hits = self.cache_misses = 0

    def _class_embeddings(self, entries: Sequence[str]) -> ClassEmbeddings:
        model_key = text_weights_identity(self.text_encoder)
        key = (tuple(entries), self.templates, model_key)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return cached
        self.cache_misses += 1
        disk, where = self._disk_cache, (entries, self.templates, self.text_encoder, model_key)
        weights = disk.read(*where) if disk is not None else None
        if weights is None:
            weights = self._build(entries)
            if disk is not None:
                disk.write(*where, weights)
        self._cache[key] = weights
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        return weights

    def _build(self, entries: Sequence[str]) -> ClassEmbeddings:
        synonyms, owners = [], []
        for class_index, entry in enumerate(entries):
            names = class_synonyms(entry)
            if not names:
                raise ValueError(f"class {class_index} ({entry!r}) holds no name")
            synonyms.extend(names)
            owners.extend([class_index] * len(names))
        num_templates = len(self.templates)
        synonyms_per_call = max(1, self.prompt_chunk_size // num_templates)
        chunks = []
        for start in range(0, len(synonyms), synonyms_per_call):
            group = synonyms[start : start + synonyms_per_call]
            prompts = [t.replace(_PLACEHOLDER, name) for name in group for t in self.templates]
            with torch.no_grad():
                embeds = self.text_encoder.encode_text(prompts, normalize=True)
            embeds = embeds.float().reshape(len(group), num_templates, -1).mean(dim=1)
            chunks.append(F.normalize(embeds, dim=-1))
        logger.info(
            "Built text embeddings of %d classes (%d synonyms x %d templates)",
            len(entries),
            len(synonyms),
            num_templates,
        )
        return ClassEmbeddings(
            embeds=torch.cat(chunks),
            synonym_to_class=torch.tensor(owners, dtype=torch.long),
            num_classes=len(entries),
        )
