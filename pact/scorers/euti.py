"""EUTI: PACT's attention-free importance (a global query's softmax times the hidden norm)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

from pact.lazy import lazy_module
from pact.registry import register_scorer
from pact.scorers.base import Scorer, ScorerConfig
from pact.tensors import LayerInputs

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class EutiConfig(ScorerConfig):
    """EUTI has no parameters beyond the stage's keep ratio."""

    default_keep_ratio: ClassVar[float] = 0.55


def grouped_prefix_softmax(queries: Tensor, keys: Tensor, prefix: Tensor) -> Tensor:
    """Head-averaged softmax of the prefix's mean query against every prefix key.

    ``queries`` ``[B, Hq, N, d]``, ``keys`` ``[B, Hkv, N, d]`` (GQA: each key head serves
    ``Hq / Hkv`` query heads), ``prefix`` ``[B, N]`` bool. Returns ``[B, N]`` float32, zero
    outside the prefix. Never builds an ``N x N`` matrix.
    """
    batch, q_heads, tokens, head_dim = queries.shape
    kv_heads = keys.shape[1]
    weights = prefix.float()
    counts = weights.sum(dim=1).clamp(min=1.0)
    grouped = queries.float().view(batch, kv_heads, q_heads // kv_heads, tokens, head_dim)
    # Zero the queries outside the prefix first: a weight of 0 times a NaN at a padding
    # slot would still be NaN and spoil the whole row's global query.
    grouped = grouped.masked_fill(~prefix[:, None, None, :, None], 0.0)
    global_query = torch.einsum("bkgnd,bn->bkgd", grouped, weights) / counts[:, None, None, None]
    logits = torch.einsum("bkgd,bknd->bkgn", global_query, keys.float()) / math.sqrt(head_dim)
    logits = logits.masked_fill(~prefix[:, None, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # rows with an empty prefix
    return probs.mean(dim=(1, 2))


@register_scorer("euti")
class Euti(Scorer):
    """PACT's attention-free importance, from pre-RoPE queries and keys:
    ``I[j] = mean_h softmax_{j in T}(g_h . K[j,h] / sqrt(d)) * ||H[j]||``."""

    Config = EutiConfig

    def score(self, inputs: LayerInputs) -> Tensor:
        if inputs.qk is None:
            raise ValueError("scorer 'euti' needs the layer's queries and keys (inputs.qk)")
        queries, keys = inputs.qk.get(rotary=False)
        attention = grouped_prefix_softmax(queries, keys, inputs.prefix_mask())
        return attention * inputs.hidden.float().norm(dim=-1)
