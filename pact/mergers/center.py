"""Center merger: each cluster keeps its representative's hidden state unchanged."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pact.mergers.base import Merger, MergerConfig, RowMergeInput
from pact.mergers.folding import Members, fold_row
from pact.registry import register_merger
from pact.tensors import RowReduction

if TYPE_CHECKING:
    from torch import Tensor


class CenterConfig(MergerConfig):
    """The center merger has no parameters; sizes still add up for proportional attention."""


@register_merger("center")
class Center(Merger):
    """Cluster token = the center's own hidden state; the other members are dropped."""

    Config = CenterConfig

    def merge(self, row: RowMergeInput) -> RowReduction:
        return fold_row(row, self.cluster_hidden)

    def cluster_hidden(self, row: RowMergeInput, members: Members, cluster_size: Tensor) -> Tensor:
        return row.hidden[members.center_slots].float()
