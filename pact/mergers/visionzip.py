"""VisionZip's contextual merge: a target's features plus the mean of the tokens it took (Yang
et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025,
https://github.com/dvlab-research/VisionZip).

This is what the official code computes (``target_hidden + aggregated_hidden``): the target is
added to its members' mean rather than averaged with them, and a target that took no token
keeps its own features. Members count once each, whatever their size (the official code runs
on the tower's tokens, which are all of size 1). The ``mean`` merger is the averaging
alternative.
"""

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


class VisionZipMergeConfig(MergerConfig):
    """VisionZip's merge has no parameters."""


@register_merger("visionzip")
class VisionZipMerge(Merger):
    """Cluster token = its center's hidden state + the mean of the other members' (float32)."""

    Config = VisionZipMergeConfig

    def merge(self, row: RowMergeInput) -> RowReduction:
        return fold_row(row, self.cluster_hidden)

    def cluster_hidden(self, row: RowMergeInput, members: Members, cluster_size: Tensor) -> Tensor:
        others = members.slots != members.center_slots[members.clusters]
        clusters = members.clusters[others]
        n_clusters = cluster_size.numel()
        ones = torch.ones(clusters.numel(), device=row.hidden.device)
        total = cluster_sums(clusters, row.hidden[members.slots[others]], ones, n_clusters)
        count = cluster_sums(clusters, ones, ones, n_clusters)
        mean = total / count.clamp(min=1.0)[:, None]
        return row.hidden[members.center_slots].float() + mean
