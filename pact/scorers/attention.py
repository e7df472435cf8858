"""FastV: the causal attention each visual token receives, averaged over heads and queries."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from pact.lazy import lazy_module
from pact.registry import register_scorer
from pact.scorers.base import Scorer, ScorerConfig
from pact.tensors import LayerInputs

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class AttentionConfig(ScorerConfig):
    """Settings of the FastV scorer."""

    query_chunk: int = Field(1024, ge=1, strict=True)
    """Queries processed at once; bounds memory to ``B x H x query_chunk x N`` floats."""


def received_attention(
    queries: Tensor, keys: Tensor, padding_mask: Tensor, query_chunk: int = 1024
) -> Tensor:
    """Mean over heads and over real query positions of causal softmax attention.

    ``queries`` ``[B, Hq, N, d]``, ``keys`` ``[B, Hkv, N, d]``, ``padding_mask`` ``[B, N]``.
    Returns ``[B, N]`` float32.
    """
    batch, q_heads, tokens, head_dim = queries.shape
    kv_heads = keys.shape[1]
    grouped = queries.float().view(batch, kv_heads, q_heads // kv_heads, tokens, head_dim)
    keys = keys.float()
    index = torch.arange(tokens, device=queries.device)
    received = torch.zeros(batch, tokens, dtype=torch.float32, device=queries.device)
    for start in range(0, tokens, query_chunk):
        rows = index[start : start + query_chunk]
        logits = torch.einsum("bkgqd,bknd->bkgqn", grouped[:, :, :, rows], keys)
        logits = logits / math.sqrt(head_dim)
        allowed = (index[None, :] <= rows[:, None])[None] & padding_mask[:, None, :]
        allowed = allowed & padding_mask[:, rows, None]
        logits = logits.masked_fill(~allowed[:, None, None], float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # padded query rows
        received += probs.sum(dim=3).mean(dim=(1, 2))
    return received / padding_mask.float().sum(dim=1, keepdim=True).clamp(min=1.0)


@register_scorer("attention")
class Attention(Scorer):
    """FastV's importance, from this layer's post-RoPE queries and keys."""

    Config = AttentionConfig
    needs_attention_scores = True

    def score(self, inputs: LayerInputs) -> Tensor:
        if inputs.qk is None:
            raise ValueError("scorer 'attention' needs the layer's queries and keys (inputs.qk)")
        queries, keys = inputs.qk.get(rotary=True)
        assert inputs.padding_mask is not None
        return received_attention(queries, keys, inputs.padding_mask, self.config.query_chunk)
