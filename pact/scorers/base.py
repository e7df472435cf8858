"""The Scorer protocol: one importance value per token, higher is kept first."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, ClassVar

from pact.component import Component, ComponentConfig
from pact.tensors import LayerInputs

if TYPE_CHECKING:
    from torch import Tensor


class ScorerConfig(ComponentConfig):
    """Base config of scorers."""

    default_keep_ratio: ClassVar[float] = 0.5
    """Keep ratio a stage uses with this scorer when it sets none."""
    fixed_keep_ratio: ClassVar[float | None] = None
    """If set, the only keep ratio this scorer makes sense with (VTW withdraws all: 0)."""


class Scorer(Component):
    """Scores visual tokens; the pipeline keeps the ``floor(keep_ratio * |V|)`` best."""

    Config: ClassVar[type[ScorerConfig]] = ScorerConfig
    needs_attention_scores: ClassVar[bool] = False
    """True if the scorer builds an attention matrix (FastV): it cannot ride a flash kernel."""

    @abstractmethod
    def score(self, inputs: LayerInputs) -> Tensor:
        """Return ``[B, N]`` float32 importances; only visual, non-padding entries are read."""
