"""Class text embeddings of a vocabulary, and their on-disk cache across runs.

:class:`~uniovseg.modeling.text_classifier.TextClassifier` keeps recent vocabularies in memory;
this module stores them on disk, keyed by the class entries, the prompt templates and a SHA-256 of
the text tower's weights, so that a second run with the same CLIP skips the encoding (worth it on
CPU: ADE20K-847 is ~19k prompts). Files are read with ``weights_only`` (no code runs) and written
atomically; a truncated, corrupt or refused file is ignored with a warning and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from uniovseg.atomic_files import atomic_write
from uniovseg.checkpoint import read_checkpoint

__all__ = ["ClassEmbeddings", "TextEmbeddingDiskCache", "text_weights_identity"]

logger = logging.getLogger(__name__)

# On-disk format version; bump when the stored tensors change meaning.
_DISK_FORMAT = 1


@dataclass(frozen=True)
class ClassEmbeddings:
    """Per-synonym text embeddings of one vocabulary: ``embeds`` [S, D] (unit norm, float32) and
    ``synonym_to_class`` [S] (long, class index of each synonym, non-decreasing)."""

    embeds: torch.Tensor
    synonym_to_class: torch.Tensor
    num_classes: int


class TextEmbeddingDiskCache:
    """One folder of ``text_classifier_<hash>.pt`` files, one per (entries, templates, weights)."""

    def __init__(self, cache_dir: str) -> None:
        if not cache_dir:
            raise ValueError("cache_dir must name a folder")
        self.cache_dir = cache_dir
        # Weights identity -> content hash: hashing a large text tower takes about a second.
        self._content_hashes: dict[tuple, str] = {}

    def forget_weight_hashes(self) -> None:
        """Drops the memoised weight hashes (the files stay)."""
        self._content_hashes.clear()

    def path(
        self, entries: Sequence[str], templates: Sequence[str], encoder, model_key: tuple
    ) -> str:
        """The cache file of a vocabulary under ``encoder``'s current text weights
        (``model_key``: :func:`text_weights_identity` of it)."""
        content = self._content_hashes.get(model_key)
        if content is None:
            content = _weights_content_hash(encoder)
            self._content_hashes[model_key] = content
        key = {"v": _DISK_FORMAT, "entries": list(entries), "templates": list(templates)}
        payload = json.dumps({**key, "w": content})
        digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]
        return os.path.join(self.cache_dir, f"text_classifier_{digest}.pt")

    def read(
        self, entries: Sequence[str], templates: Sequence[str], encoder, model_key: tuple
    ) -> ClassEmbeddings | None:
        """The cached embeddings of ``entries``, or None when there is no usable cache file.

        The file is read by :func:`uniovseg.checkpoint.read_checkpoint` (``weights_only``: no
        code runs). A truncated, corrupt, refused or inconsistent file is ignored with one
        warning; the caller then rebuilds the embeddings and rewrites the file.
        """
        path = self.path(entries, templates, encoder, model_key)
        if not os.path.isfile(path):
            return None
        try:
            weights = _parse_cache_file(read_checkpoint(path), num_classes=len(entries))
        # read_checkpoint raises ValueError subclasses (UnsafeCheckpointError for pickled
        # objects, CorruptCheckpointError for damaged bytes) or OSError; a file that reads but
        # does not hold our three entries raises KeyError/TypeError/ValueError in the parser.
        except (OSError, KeyError, TypeError, ValueError) as error:
            reason = (str(error).strip().splitlines() or [""])[0]
            logger.warning(
                "Ignoring text-embedding cache %s, rebuilding it (%s: %s)",
                path,
                type(error).__name__,
                reason,
            )
            return None
        logger.info("Read text embeddings of %d classes from %s", len(entries), path)
        return weights

    def write(
        self,
        entries: Sequence[str],
        templates: Sequence[str],
        encoder,
        model_key: tuple,
        weights: ClassEmbeddings,
    ) -> None:
        """Stores ``weights`` for ``entries`` (readers see the old file or the new one)."""
        path = self.path(entries, templates, encoder, model_key)
        with atomic_write(path) as handle:
            torch.save(
                {
                    "embeds": weights.embeds.cpu(),
                    "synonym_to_class": weights.synonym_to_class.cpu(),
                    "num_classes": weights.num_classes,
                },
                handle,
            )


def _parse_cache_file(data: object, *, num_classes: int) -> ClassEmbeddings:
    """Checks what a cache file held and wraps it.

    Raises:
        KeyError, TypeError, ValueError: not the ``{"embeds": [S, D] float tensor,
            "synonym_to_class": [S] long tensor, "num_classes": int}`` written for
            ``num_classes`` classes.
    """
    if not isinstance(data, dict):
        raise TypeError(f"holds a {type(data).__name__}, not a dict")
    embeds, owners = data["embeds"], data["synonym_to_class"]
    if not torch.is_tensor(embeds) or not torch.is_tensor(owners):
        raise TypeError("embeds and synonym_to_class are not tensors")
    if (
        embeds.dim() != 2
        or not embeds.is_floating_point()
        or owners.dim() != 1
        or owners.dtype != torch.long
        or len(embeds) != len(owners)
        or int(data["num_classes"]) != num_classes
    ):
        raise ValueError(
            f"inconsistent content (embeds {tuple(embeds.shape)}, synonym_to_class "
            f"{tuple(owners.shape)}, num_classes {data['num_classes']}; expected {num_classes})"
        )
    return ClassEmbeddings(embeds=embeds, synonym_to_class=owners, num_classes=num_classes)


def _text_parameters(encoder) -> list[tuple[str, torch.Tensor]]:
    """The text tower's parameters: every CLIP parameter outside ``visual.`` and the scale."""
    model = getattr(encoder, "clip_model", encoder)
    if not isinstance(model, torch.nn.Module):
        return []
    return [
        (name, p)
        for name, p in model.named_parameters()
        if not name.startswith("visual.") and not name.startswith("logit_")
    ]


def text_weights_identity(encoder) -> tuple:
    """Cheap key that changes when the text weights are replaced, moved or modified in place.

    Uses each parameter's storage address and version counter (bumped by in-place writes such as
    ``load_state_dict``'s ``copy_``); encoders that are not modules are keyed by object identity.
    """
    params = _text_parameters(encoder)
    if not params:
        return (id(encoder),)
    return (id(encoder),) + tuple(
        (name, p.data_ptr(), p._version, p.dtype, p.device.type) for name, p in params
    )


def _weights_content_hash(encoder) -> str:
    """SHA-256 of the text tower's weights (for the on-disk cache; ~1 s per GB on CPU)."""
    params = _text_parameters(encoder)
    if not params:
        raise ValueError(
            "the on-disk text cache needs an encoder whose text weights can be hashed (an "
            "nn.Module or an object with a clip_model attribute); set cache_dir=''"
        )
    digest = hashlib.sha256()
    for name, p in params:
        digest.update(name.encode("utf-8"))
        digest.update(str(tuple(p.shape)).encode("utf-8"))
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
