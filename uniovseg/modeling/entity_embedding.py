"""Entity embeddings ``t_k``: entity phrases through prompt templates and the frozen CLIP text
tower, cached per unique phrase.

Paper Sec. 3.3: "each entity combined with the prompts used in [22] (ViLD) is fed into the CLIP
text encoder to obtain the text embedding t_k". Each template's embedding is L2-normalised, the
template embeddings are averaged and the mean is re-normalised: the recipe (and the templates) of
the open-vocabulary :class:`~uniovseg.modeling.text_classifier.TextClassifier`, so that training
targets and inference class embeddings are made alike.

Caption entities repeat a lot across a training run ("man", "dog", "tree"), and the text tower is
frozen, so embeddings are kept in an LRU cache keyed by the phrase. The cache is dropped whenever
the text tower's weights change identity or version (``load_state_dict`` copies in place and bumps
the tensors' version counters; ``.to(device)`` makes new tensors), so loading a checkpoint after
the first use never leaves stale embeddings.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .text_classifier import VILD_TEMPLATES, resolve_templates

__all__ = ["EntityEmbedder"]

logger = logging.getLogger(__name__)


class EntityEmbedder:
    """Entity phrases -> normalised template-averaged CLIP text embeddings, with an LRU cache.

    Not an ``nn.Module``: it owns no parameters and uses the backbone it is given, so the
    checkpoint layout is unchanged.
    """

    def __init__(
        self, *, templates: str | Sequence[str] = VILD_TEMPLATES, cache_size: int = 20000
    ) -> None:
        """
        Args:
            templates: Prompt templates with one ``{}`` for the phrase, or a template set name
                of :func:`~uniovseg.modeling.text_classifier.resolve_templates` (``"vild"``,
                ``"photo"``, ``"name"``). Use the open-vocabulary classifier's templates, so
                that entity and class embeddings come from the same prompts.
            cache_size: Most phrases kept (least recently used dropped first); 0 disables
                caching. 20000 x 768 float32 is about 60 MB.
        """
        templates = resolve_templates(templates)
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.templates = templates
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._stamp: tuple | None = None

    @staticmethod
    def _weights_stamp(backbone) -> tuple:
        """Identity + version of the text tower's first and last weights (see module doc)."""
        clip = backbone.clip_model
        text_params = [p for n, p in clip.named_parameters() if not n.startswith("visual.")]
        ends = (text_params[0], text_params[-1]) if text_params else ()
        return tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in ends)

    def clear(self) -> None:
        """Drops every cached embedding."""
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)

    def __call__(self, backbone, entities: Sequence[str]) -> torch.Tensor:
        """Embeds entity phrases (no gradient: the text tower is frozen).

        Args:
            backbone: The :class:`~uniovseg.modeling.clip_backbone.CLIPConvNeXtBackbone` whose
                text tower encodes the prompts.
            entities: E phrases (duplicates allowed).

        Returns:
            float [E, D] L2-normalised embeddings on the text tower's device ([0, D] for none).
        """
        stamp = self._weights_stamp(backbone)
        if stamp != self._stamp:
            self._cache.clear()
            self._stamp = stamp
        missing = list(dict.fromkeys(e for e in entities if e not in self._cache))
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            prompts = [t.format(e) for e in missing for t in self.templates]
            embeds = backbone.encode_text(prompts, normalize=True)
            embeds = embeds.reshape(len(missing), len(self.templates), -1).mean(dim=1)
            fresh = dict(zip(missing, F.normalize(embeds, dim=-1), strict=True))
        out = []
        for e in entities:
            if e in fresh:
                out.append(fresh[e])
            else:
                out.append(self._cache[e])
                self._cache.move_to_end(e)
        if self.cache_size:
            for e, v in fresh.items():
                self._cache[e] = v
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if not out:
            return backbone.encode_text([], normalize=True)
        return torch.stack(out)
