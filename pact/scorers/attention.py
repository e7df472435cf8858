"""FastV: the attention each visual token receives at layer K (Chen et al., "An Image is Worth
1/2 Tokens After Layer 2", ECCV 2024, https://github.com/pkunlp-icler/FastV).

As published (``query: last``), the importance of a token is the softmax attention that the
sequence's last token pays it, averaged over heads: the official code reads the last row of
layer K's head-averaged attention map, and PyramidDrop (Xing et al., CVPR 2025) ranks by the
same row, the last instruction token's. ``query: all`` is pact's variant: the causal
attention a token receives averaged over every real query position as well.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from pact.lazy import lazy_module
from pact.registry import register_scorer
from pact.scorers.base import Scorer, ScorerConfig
from pact.tensors import LayerInputs

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class AttentionConfig(ScorerConfig):
    """Settings of the FastV scorer."""

    query: Literal["last", "all"] = "last"
    """Whose attention ranks the tokens: each row's last real token (FastV and PyramidDrop as
    published), or the mean over all real query positions (pact's variant)."""
    query_chunk: int = Field(1024, ge=1, strict=True)
    """Queries processed at once with ``query: all``; bounds memory to
    ``B x H x query_chunk x N`` floats."""

    @model_validator(mode="after")
    def _chunk_needs_all_queries(self) -> AttentionConfig:
        if self.query == "last" and self.query_chunk != 1024:
            raise ValueError("query_chunk applies to query: all only; remove it or set query=all")
        return self


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


def last_token_attention(queries: Tensor, keys: Tensor, padding_mask: Tensor) -> Tensor:
    """Softmax attention from each row's last real token, averaged over heads.

    Shapes as in :func:`received_attention`; the last token attends to every real token
    (causality allows all of them). Returns ``[B, N]`` float32, 0 at padding.
    """
    batch, q_heads, tokens, head_dim = queries.shape
    kv_heads = keys.shape[1]
    index = torch.arange(tokens, device=queries.device)
    last = torch.where(padding_mask, index, -1).amax(dim=1).clamp(min=0)
    rows = torch.arange(batch, device=queries.device)
    query = queries.float()[rows, :, last].view(batch, kv_heads, q_heads // kv_heads, head_dim)
    logits = torch.einsum("bkgd,bknd->bkgn", query, keys.float()) / math.sqrt(head_dim)
    logits = logits.masked_fill(~padding_mask[:, None, None], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # an all-padding row
    return probs.mean(dim=(1, 2))


@register_scorer("attention")
class Attention(Scorer):
    """FastV's importance, from this layer's post-RoPE queries and keys (see the module)."""

    Config = AttentionConfig
    needs_attention_scores = True

    def score(self, inputs: LayerInputs) -> Tensor:
        if inputs.qk is None:
            raise ValueError("scorer 'attention' needs the layer's queries and keys (inputs.qk)")
        queries, keys = inputs.qk.get(rotary=True)
        assert inputs.padding_mask is not None
        if self.config.query == "last":
            return last_token_attention(queries, keys, inputs.padding_mask)
        return received_attention(queries, keys, inputs.padding_mask, self.config.query_chunk)
