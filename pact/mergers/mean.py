"""Mean merger: each cluster becomes the (size-weighted) mean of its members' hidden states."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pact.lazy import lazy_module
from pact.mergers.base import Merger, MergerConfig, RowMergeInput
from pact.mergers.folding import Members, cluster_sums, fold_row
from pact.registry import register_merger
from pact.tensors import RowReduction

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class MeanConfig(MergerConfig):
    """Settings of the mean merger."""

    weighted: bool = True
    """Weight members by their sizes (tokens merged at earlier stages count for more)."""


@register_merger("mean")
class Mean(Merger):
    """Cluster token = mean of member hidden states (float32), placed at the center's slot."""

    Config = MeanConfig

    def merge(self, row: RowMergeInput) -> RowReduction:
        return fold_row(row, self.cluster_hidden)

    def cluster_hidden(self, row: RowMergeInput, members: Members, cluster_size: Tensor) -> Tensor:
        weights = members.weights if self.config.weighted else torch.ones_like(members.weights)
        n_clusters = cluster_size.numel()
        total = cluster_sums(members.clusters, row.hidden[members.slots], weights, n_clusters)
        count = cluster_sums(members.clusters, weights, weights.new_ones(weights.shape), n_clusters)
        return total / count[:, None]
