"""CLIP text encoding without the padding: the same embeddings for a fraction of the work.

CLIP pads every text to its 77-token context and keeps the features of one token, the end of
text (EOT). Its text transformer is causal: a token's features depend on the tokens before it
only, so nothing after the EOT changes them. A class prompt such as "a photo of a small {}." has
8-20 tokens; running the tower on the first ``last EOT + 1`` positions of a batch gives the same
embeddings (up to float rounding: matrix products of another shape sum in another order) with
4-8x fewer operations, and sorting texts by length before batching keeps every batch's cut short.

Towers that are not causal, or that pool another token, are run whole by open_clip's own
``encode_text``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["can_skip_padding", "encode_text_tokens", "pooled_token_positions"]


def can_skip_padding(clip_model: nn.Module) -> bool:
    """Whether :func:`encode_text_tokens` may cut ``clip_model``'s text tower short: an
    open_clip ``CLIP`` whose text attention mask is causal and which pools the EOT token."""
    mask = getattr(clip_model, "attn_mask", None)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if not isinstance(mask, torch.Tensor) or not all(hasattr(clip_model, a) for a in needed):
        return False
    if getattr(clip_model, "text_pool_type", "argmax") not in ("argmax", "eos"):
        return False
    if getattr(clip_model, "text_pool_type", "argmax") == "eos" and (
        getattr(clip_model, "text_eos_id", None) is None
    ):
        return False
    causal = torch.full_like(mask, float("-inf")).triu(1)
    return mask.dim() == 2 and torch.equal(mask, causal)


def pooled_token_positions(clip_model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """int64 [T]: the position of the token whose features become each text's embedding (the
    EOT: the highest token id for ``argmax`` pooling, the first ``text_eos_id`` for ``eos``)."""
    if getattr(clip_model, "text_pool_type", "argmax") == "eos":
        return (tokens == clip_model.text_eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def encode_text_tokens(
    clip_model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """``clip_model.encode_text(tokens)`` (not normalised) from the first ``positions.max() + 1``
    token positions only; requires :func:`can_skip_padding`.

    Args:
        clip_model: An open_clip ``CLIP`` with a causal text tower.
        tokens: int64 [T, L] token ids from the model's tokenizer.
        positions: int64 [T] from :func:`pooled_token_positions`.

    Returns:
        [T, D] text embeddings in the model's cast dtype.
    """
    length = int(positions.max()) + 1 if positions.numel() else 1
    model = clip_model
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens[:, :length]).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), positions]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection
