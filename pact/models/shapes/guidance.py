"""Training stage 2's attention guidance: point a few heads at the objects a question names.

Answering "is there a red circle" or "is the red circle left of the blue square" needs a
head that finds the token that is red *and* a circle among 144. Trained on answers alone,
a small decoder stays at chance on those kinds for hundreds of steps. Guidance adds, for
each guided question, ``-log`` of the attention mass that head ``k`` of one decoder layer
puts, from the question's ``?``, on the tokens of the ``k``-th object the question names
(:attr:`~pact.models.shapes.questions.Example.referents`; ``<bos>`` when the named pair is
absent). Nothing else about attention is prescribed, and the saved model is stock.

The attention is recomputed from the layer's own input (captured by a forward pre-hook) for
the guided queries only, as the model computes it: RMS norm, q/k projections, rotary
embedding at the row's position ids, the packed mask, softmax. The model itself keeps its
fused attention kernel.
"""

from __future__ import annotations

import math

import torch
from transformers.models.qwen2.modeling_qwen2 import rotate_half

from pact.models.shapes.packing import Guide


class AttentionGuide:
    """Captures one decoder layer's input at every forward; :meth:`loss` scores guides."""

    def __init__(self, model, layer: int):
        self.layer = model.model.language_model.layers[layer]
        self._inputs: dict = {}
        self._hook = self.layer.register_forward_pre_hook(self._capture, with_kwargs=True)

    def _capture(self, module, args, kwargs) -> None:
        self._inputs = {
            "hidden": args[0] if args else kwargs["hidden_states"],
            "rope": kwargs["position_embeddings"],
            "mask": kwargs["attention_mask"],
        }

    def loss(self, guides: list[Guide]) -> torch.Tensor:
        """Mean over guides of ``-log`` (attention mass on the guide's keys)."""
        log_attention = self.log_attention(guides)
        losses = [-torch.logsumexp(log_attention[g, guide.keys], dim=0)
                  for g, guide in enumerate(guides)]  # fmt: skip
        return torch.stack(losses).mean()

    def log_attention(self, guides: list[Guide]) -> torch.Tensor:
        """``[G, L]`` log attention of each guide's head from its query, over the row."""
        attention, inputs = self.layer.self_attn, self._inputs
        hidden = self.layer.input_layernorm(inputs["hidden"])
        cos, sin = inputs["rope"]
        rows = torch.tensor([g.row for g in guides], device=hidden.device)
        queries = torch.tensor([g.query for g in guides], device=hidden.device)
        heads = torch.tensor([g.head for g in guides], device=hidden.device)
        width = attention.head_dim
        kv_heads = attention.config.num_key_value_heads
        per_kv = attention.config.num_attention_heads // kv_heads
        q = attention.q_proj(hidden[rows, queries]).view(len(guides), -1, width)
        q = q * cos[rows, queries][:, None] + rotate_half(q) * sin[rows, queries][:, None]
        q = q[torch.arange(len(guides)), heads]  # [G, d]
        k = attention.k_proj(hidden).view(*hidden.shape[:2], kv_heads, width)
        k = k * cos[:, :, None] + rotate_half(k) * sin[:, :, None]
        k = k[rows, :, heads // per_kv]  # [G, L, d]
        logits = (k @ q[:, :, None]).squeeze(-1) / math.sqrt(width)
        return (logits + inputs["mask"][rows, 0, queries]).log_softmax(dim=-1)

    def remove(self) -> None:
        self._hook.remove()
