"""Random pruning: a seeded baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from pact.lazy import lazy_module
from pact.registry import register_scorer
from pact.scorers.base import Scorer, ScorerConfig
from pact.tensors import LayerInputs

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class RandomConfig(ScorerConfig):
    """Settings of the random scorer."""

    seed: int = Field(0, strict=True)
    """Seed of the generator; a row with the same number of real tokens draws the same scores,
    whatever the batch around it and its padding."""


@register_scorer("random")
class Random(Scorer):
    """Uniform random importances from a CPU generator seeded per call (device-independent)."""

    Config = RandomConfig

    def score(self, inputs: LayerInputs) -> Tensor:
        assert inputs.padding_mask is not None
        scores = torch.zeros(inputs.hidden.shape[:2])
        # One generator per row over its real tokens only: a row scores the same alone as
        # in any batch, padded left or right.
        for row, real in enumerate(inputs.padding_mask.cpu()):
            generator = torch.Generator().manual_seed(self.config.seed)
            scores[row, real] = torch.rand(int(real.sum()), generator=generator)
        return scores.to(inputs.hidden.device)
