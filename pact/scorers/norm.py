"""Hidden-state norm as importance (EUTI without its attention term)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pact.registry import register_scorer
from pact.scorers.base import Scorer, ScorerConfig
from pact.tensors import LayerInputs

if TYPE_CHECKING:
    from torch import Tensor


class NormConfig(ScorerConfig):
    """The norm scorer has no parameters beyond the stage's keep ratio."""


@register_scorer("norm")
class Norm(Scorer):
    """The norm of each hidden state in float32: ``I[j] = ||H[j]||_2``."""

    Config = NormConfig

    def score(self, inputs: LayerInputs) -> Tensor:
        return inputs.hidden.float().norm(dim=-1)
