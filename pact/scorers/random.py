"""Random pruning: a seeded baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from pact.registry import register_scorer
from pact.scorers.base import Scorer, ScorerConfig
from pact.tensors import LayerInputs


class RandomConfig(ScorerConfig):
    """Settings of the random scorer."""

    seed: int = 0
    """Seed of the generator; every call with the same shapes draws the same scores."""


@register_scorer("random")
class Random(Scorer):
    """Uniform random importances from a CPU generator seeded per call (device-independent)."""

    Config = RandomConfig

    def score(self, inputs: LayerInputs) -> Tensor:
        generator = torch.Generator().manual_seed(self.config.seed)
        scores = torch.rand(inputs.hidden.shape[:2], generator=generator)
        return scores.to(inputs.hidden.device)
