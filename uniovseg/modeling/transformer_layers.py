"""Post-norm attention and FFN layers of the mask decoder (Mask2Former's layer layout).

Parameter names follow ``nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``,
``out_proj``) and Mask2Former's layer classes (``self_attn``/``multihead_attn``, ``norm``,
``linear1``/``linear2``) so that the release's checkpoint loads. The attention itself is
computed with :func:`torch.nn.functional.scaled_dot_product_attention`, batch first, so that a
boolean mask broadcasts over heads instead of being repeated per head, and fused kernels are
used where the device has them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "CrossAttentionLayer", "FFNLayer", "MultiHeadAttention", "SelfAttentionLayer"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter layout, batch first."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}.")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: [B, Q, C].
            key: [B, S, C].
            value: [B, S, C].
            attn_mask: Optional bool [B or 1, 1, Q, S]; True where a query MAY attend to a key
                (the convention of ``scaled_dot_product_attention``, the opposite of
                ``nn.MultiheadAttention``'s). Every row must allow at least one key.

        Returns:
            [B, Q, C].
        """
        return self.attend(query, *self.project_key_value(key, value), attn_mask=attn_mask)

    def project_key_value(
        self, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys [B, S, C] and values [B, S, C] -> per-head projections, each
        [B, heads, S, C / heads]. Separate from :meth:`attend` so that keys and values shared by
        many queries (an image's pixels, for every chunk of prompts) are projected once."""
        _, w_k, w_v = self.in_proj_weight.chunk(3)
        _, b_k, b_v = self.in_proj_bias.chunk(3)
        return self._split_heads(key, w_k, b_k), self._split_heads(value, w_v, b_v)

    def attend(
        self,
        query: torch.Tensor,
        key_heads: torch.Tensor,
        value_heads: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Queries [B, Q, C] x projections from :meth:`project_key_value` -> [B, Q, C]; the mask
        as in :meth:`forward`."""
        w_q = self.in_proj_weight[: self.embed_dim]
        b_q = self.in_proj_bias[: self.embed_dim]
        out = F.scaled_dot_product_attention(
            self._split_heads(query, w_q, b_q), key_heads, value_heads, attn_mask=attn_mask
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def _split_heads(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """[B, N, C] -> projected [B, heads, N, C / heads]."""
        x = F.linear(x, weight, bias)
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)


class SelfAttentionLayer(nn.Module):
    """``x <- LayerNorm(x + Attn(q=k=x+pos, v=x))`` (post-norm, no dropout)."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(embed_dim, num_heads)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: [N, T, C] token sequences (N independent sequences of T tokens).
            query_pos: Optional [N, T, C] added to queries and keys.

        Returns:
            [N, T, C].
        """
        q = x if query_pos is None else x + query_pos
        return self.norm(x + self.self_attn(q, q, x))


class CrossAttentionLayer(nn.Module):
    """``x <- LayerNorm(x + Attn(q=x+query_pos, k=memory+pos, v=memory, mask))``."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.multihead_attn = MultiHeadAttention(embed_dim, num_heads)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        *,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: [B, Q, C] queries.
            memory: [B, S, C] keys/values.
            pos: [B or 1, S, C] added to the keys.
            query_pos: [B, Q, C] added to the queries.
            attn_mask: Optional bool [B, 1, Q, S], True where attention is allowed.

        Returns:
            [B, Q, C].
        """
        return self.attend_projected(
            x, self.project_memory(memory, pos=pos), query_pos=query_pos, attn_mask=attn_mask
        )

    def project_memory(
        self, memory: torch.Tensor, *, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory [B, S, C] and key positions -> this layer's (keys, values) per head, each
        [B, heads, S, C / heads]: prompt independent, so computed once per image."""
        return self.multihead_attn.project_key_value(memory + pos, memory)

    def attend_projected(
        self,
        x: torch.Tensor,
        key_value: tuple[torch.Tensor, torch.Tensor],
        *,
        query_pos: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As :meth:`forward`, with keys and values from :meth:`project_memory`."""
        attended = self.multihead_attn.attend(x + query_pos, *key_value, attn_mask=attn_mask)
        return self.norm(x + attended)


class FFNLayer(nn.Module):
    """``x <- LayerNorm(x + W2 ReLU(W1 x))``."""

    def __init__(self, embed_dim: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(embed_dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., C] -> [..., C]."""
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (checkpoint names ``layers.{i}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be positive, got {num_layers}.")
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(
            nn.Linear(d_in, d_out) for d_in, d_out in zip(dims_in, dims_out, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., input_dim] -> [..., output_dim]."""
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x
