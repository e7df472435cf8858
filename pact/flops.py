"""Analytic prefill FLOPs of a text decoder, with and without a reduction.

Papers compare token-reduction methods by the decoder's TFLOPs; pact counts them from the
decoder's config and the tokens each layer receives. One layer on ``n`` tokens, counting a
multiply-add as 2 FLOPs:

* projections: ``2 n D (2 Hq d + 2 Hkv d)`` (queries and output: ``Hq d``; keys and values:
  ``Hkv d``);
* attention: ``4 n^2 Hq d`` (``Q K^T`` and the weighted sum of values over the full square,
  as a dense kernel computes it whatever the causal mask);
* gated MLP: ``6 n D I`` (gate, up and down projections).

Norms, rotary embeddings, softmax, the embedding and the LM head are left out (they are
linear in ``n`` and small, or the same with and without reduction). These are exactly the
matrix products that :class:`torch.utils.flop_counter.FlopCounterMode` counts for an eager
decoder, which the tests check. Each row of a batch is counted at its own real tokens, as
if the call's tokens were the whole sequence (a first prefill, no cache before it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a decoder that its FLOPs depend on."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int

    @classmethod
    def from_config(cls, config: Any) -> DecoderShape:
        """From a transformers text-decoder config (``hidden_size``, ``intermediate_size``,
        ``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` if set,
        ``num_hidden_layers``)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            layers=config.num_hidden_layers,
        )

    def layer_flops(self, tokens: int) -> int:
        """FLOPs of one decoder layer on ``tokens`` tokens."""
        width = self.heads * self.head_dim
        projections = 2 * tokens * self.hidden * (2 * width + 2 * self.kv_heads * self.head_dim)
        attention = 4 * tokens * tokens * width
        return projections + attention + 6 * tokens * self.hidden * self.intermediate

    def prefill_flops(self, tokens: int, stages: list[tuple[int, int]] = ()) -> int:
        """FLOPs of every layer for one row of ``tokens`` tokens; ``stages`` lists, in layer
        order, ``(layer, tokens from that layer on)`` for each reduction."""
        per_layer = [tokens] * self.layers
        for layer, kept in stages:
            per_layer[layer:] = [kept] * (self.layers - layer)
        return sum(self.layer_flops(count) for count in per_layer)
