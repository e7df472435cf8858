"""The Scorer protocol: one importance value per token, higher is kept first."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, ClassVar

from pact.component import Component, ComponentConfig
from pact.tensors import Budget, LayerInputs

if TYPE_CHECKING:
    from torch import Tensor


class ScorerConfig(ComponentConfig):
    """Base config of scorers."""

    default_keep_ratio: ClassVar[float] = 0.5
    """Keep ratio a stage uses with this scorer when it sets none."""
    fixed_keep_ratio: ClassVar[float | None] = None
    """If set, the only keep ratio this scorer makes sense with (VTW withdraws all: 0)."""
    reads_tower: ClassVar[bool] = False
    """True if the scorer reads the vision tower's attention (VisionZip): vision stages only."""

    def keep_count_setting(self) -> str | None:
        """The field of these settings that makes the scorer choose how many tokens each
        stage keeps (:meth:`Scorer.budget_for`; SparseVLM's ``rank_scale``), None if none
        does. A stage whose scorer names one refuses ``keep_ratio`` and ``keep_tokens``."""
        return None


class Scorer(Component):
    """Scores visual tokens; the pipeline keeps the ``floor(keep_ratio * |V|)`` best."""

    Config: ClassVar[type[ScorerConfig]] = ScorerConfig
    needs_attention_scores: ClassVar[bool] = False
    """True if the scorer builds an attention matrix (FastV): it cannot ride a flash kernel."""

    @abstractmethod
    def score(self, inputs: LayerInputs) -> Tensor:
        """Return ``[B, N]`` float32 importances; only visual, non-padding entries are read."""

    def score_for(self, inputs: LayerInputs, budget: Budget) -> Tensor:
        """Scores for a stage that keeps ``budget.counts`` tokens of each group.

        The pipeline calls this; the default ignores the budget and returns :meth:`score`.
        Scorers whose choice depends on how many tokens are kept (DART's tokens per pivot) or
        on which tokens form an image (DivPrune's diversity within each image) override it.
        """
        return self.score(inputs)

    def budget_for(self, inputs: LayerInputs, budget: Budget) -> Budget:
        """The budget the stage keeps, given the one its settings ask for.

        The pipeline calls this before :meth:`score_for`; the default returns ``budget``.
        A scorer whose config names a :meth:`~ScorerConfig.keep_count_setting` receives one keeping
        every visual token of each row and returns its own counts over the same groups.
        """
        return budget

    def budget_and_scores(self, inputs: LayerInputs, budget: Budget) -> tuple[Budget, Tensor]:
        """:meth:`budget_for`, then :meth:`score_for` at that budget: what the pipeline calls.

        A scorer whose count and scores come from the same work (SparseVLM's rater attention)
        overrides this to do that work once.
        """
        budget = self.budget_for(inputs, budget)
        return budget, self.score_for(inputs, budget)
