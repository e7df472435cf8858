"""DivPrune: keep the most diverse visual tokens, a max-min diversity selection on the
projector's output (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large
Multimodal Models", CVPR 2025, https://github.com/vbdi/divprune).

Greedy, with cosine distance ``1 - cos`` between hidden states: the first token is the one
farthest from its nearest neighbour; each next one is the token whose distance to the tokens
already chosen is largest. The order does not depend on how many are kept, so the scorer
returns it (earlier chosen, higher score) and the stage keeps its budget's first tokens.
Placed at layer 0 (the ``divprune`` preset), the hidden states are the projector's output,
as in the paper, and pruned tokens never enter the decoder. Each image is its own set with
``keep_tokens``; with ``keep_ratio`` a row's visual tokens form one set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pact.distance import cosine_distances
from pact.lazy import lazy_module
from pact.registry import register_scorer
from pact.scorers.base import Scorer, ScorerConfig
from pact.tensors import Budget, LayerInputs

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class DivPruneConfig(ScorerConfig):
    """DivPrune has no parameters beyond the stage's budget."""


def max_min_order(features: Tensor) -> Tensor:
    """Indices of ``[n, F]`` ``features`` in DivPrune's greedy order (ties to the lower index)."""
    n = features.shape[0]
    if n <= 1:
        return torch.arange(n, device=features.device)
    distances = cosine_distances(features)
    others = distances + torch.diag(torch.full((n,), float("inf"), device=features.device))
    nearest = others.min(dim=0).values  # each token's distance to its nearest other token
    order = [int(torch.argmax(nearest))]
    closest = distances[order[0]].clone()
    chosen = torch.zeros(n, dtype=torch.bool, device=features.device)
    chosen[order[0]] = True
    for _ in range(n - 1):
        pick = int(torch.argmax(closest.masked_fill(chosen, -1.0)))
        order.append(pick)
        chosen[pick] = True
        closest = torch.minimum(closest, distances[pick])
    return torch.tensor(order, device=features.device)


@register_scorer("divprune")
class DivPrune(Scorer):
    """Scores each visual token by its place in the max-min order of its image (or row)."""

    Config = DivPruneConfig

    def score(self, inputs: LayerInputs) -> Tensor:
        return self.score_for(inputs, Budget.whole_rows(inputs.real_visual_mask, 1.0))

    def score_for(self, inputs: LayerInputs, budget: Budget) -> Tensor:
        scores = torch.zeros(inputs.hidden.shape[:2], device=inputs.hidden.device)
        for row in range(inputs.batch_size):
            for slots in budget.members(row):
                order = slots[max_min_order(inputs.hidden[row, slots].float())]
                ranks = torch.arange(order.numel(), 0, -1, device=order.device)
                scores[row, order] = ranks.float() / order.numel()
        return scores
