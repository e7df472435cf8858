"""DART: keep the visual tokens least similar to a few pivot tokens (Wen et al., "Stop Looking
for Important Tokens in Multimodal Language Models: Duplication Matters More", 2025,
https://github.com/ZichenWen1/DART).

At layer K the pivots are the visual tokens, and the instruction tokens, whose keys have the
largest L1 norm; each pivot then takes, in turn, the not yet taken visual tokens least cosine
similar to it. No attention score is formed, so DART runs under FlashAttention.

pact's reading of it: keys are the stage layer's own post-RoPE keys with every key head
concatenated (the official code reads layer K-1's cached keys); similarity is measured on the
hidden states entering layer K (the official code first applies the decoder's final norm,
whose per-channel gain pact's tensor-only components do not see); the instruction is the
row's real tokens after its last visual token. Tokens kept are exactly the stage's budget:
the image pivots, then the rest shared as evenly as possible among the pivots in pivot order
(the official count, ``pivots + (pivots + text pivots) x floor(budget / (pivots + text
pivots))``, can miss the budget by a few tokens).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from pact.distance import normalize
from pact.lazy import lazy_module
from pact.registry import register_scorer
from pact.scorers.base import Scorer, ScorerConfig
from pact.tensors import Budget, LayerInputs

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class DartConfig(ScorerConfig):
    """Settings of DART (the paper's defaults: 4 image and 4 text pivots)."""

    image_pivots: int = Field(4, ge=1, strict=True)
    """Visual tokens with the largest key L1 norm that are kept as pivots."""
    text_pivots: int = Field(4, ge=0, strict=True)
    """Instruction tokens with the largest key L1 norm that pick visual tokens (not kept by
    DART: text is never removed)."""


def top_indices(values: Tensor, count: int) -> Tensor:
    """Positions of the ``count`` largest ``values``, largest first; ties to the lower index."""
    return torch.sort(values, descending=True, stable=True).indices[:count]


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one, larger ones first."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


@register_scorer("dart")
class Dart(Scorer):
    """Scores 1 at the visual tokens DART keeps for the stage's budget, 0 elsewhere."""

    Config = DartConfig

    def score(self, inputs: LayerInputs) -> Tensor:
        budget = Budget.whole_rows(inputs.real_visual_mask, self.config.default_keep_ratio)
        return self.score_for(inputs, budget)

    def score_for(self, inputs: LayerInputs, budget: Budget) -> Tensor:
        if inputs.qk is None:
            raise ValueError("scorer 'dart' needs the layer's keys (inputs.qk)")
        keys = inputs.qk.keys(rotary=True).float()
        key_norms = keys.abs().sum(dim=-1).sum(dim=1)  # L1 over every head's channels
        unit = normalize(inputs.hidden.float())
        scores = torch.zeros(inputs.hidden.shape[:2], device=inputs.hidden.device)
        for row in range(inputs.batch_size):
            text = self._text_pivots(inputs, row, key_norms[row])
            for slots, count in zip(budget.members(row), budget.counts[row], strict=True):
                kept = self._select(slots, count, text, key_norms[row], unit[row])
                scores[row, kept] = 1.0
        return scores

    def _text_pivots(self, inputs: LayerInputs, row: int, key_norms: Tensor) -> Tensor:
        """The instruction tokens (real, after the last visual one) with the largest keys."""
        visual = torch.nonzero(inputs.real_visual_mask[row]).flatten()
        after = torch.arange(inputs.hidden.shape[1], device=visual.device)
        if not visual.numel():
            return after[:0]
        after = after[(after > visual.max()) & inputs.padding_mask[row]]
        return after[top_indices(key_norms[after], self.config.text_pivots)]

    def _select(
        self, slots: Tensor, count: int, text: Tensor, key_norms: Tensor, unit: Tensor
    ) -> Tensor:
        """The ``count`` slots of one group (an image or a row's visual tokens) DART keeps."""
        if count == 0:
            return slots[:0]
        pivots = slots[top_indices(key_norms[slots], min(self.config.image_pivots, count))]
        chosen = [pivots]
        free = torch.ones(slots.numel(), dtype=torch.bool, device=slots.device)
        free[torch.isin(slots, pivots)] = False
        leaders = torch.cat([pivots, text])
        remaining = shares(count - pivots.numel(), leaders.numel())
        for leader, share in zip(leaders, remaining, strict=True):
            candidates = slots[free]
            similarity = unit[candidates] @ unit[leader]
            picked = top_indices(-similarity, share)
            chosen.append(candidates[picked])
            free[torch.isin(slots, candidates[picked])] = False
        return torch.cat(chosen)
