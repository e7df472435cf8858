"""VTW (visual tokens withdrawal): every visual token leaves at the stage's layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pact.lazy import lazy_module
from pact.registry import register_scorer
from pact.scorers.base import Scorer, ScorerConfig
from pact.tensors import LayerInputs

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class WithdrawConfig(ScorerConfig):
    """VTW has no parameters; its stage keeps no visual token."""

    default_keep_ratio: ClassVar[float] = 0.0
    fixed_keep_ratio: ClassVar[float | None] = 0.0


@register_scorer("withdraw")
class Withdraw(Scorer):
    """Scores are irrelevant (keep ratio 0): returns zeros."""

    Config = WithdrawConfig

    def score(self, inputs: LayerInputs) -> Tensor:
        return torch.zeros(
            inputs.hidden.shape[:2], dtype=torch.float32, device=inputs.hidden.device
        )
