"""ToMe: bipartite soft matching, merging the ``r`` most similar pairs (Bolya et al., 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from pact.clusterers.base import Clusterer, ClustererConfig
from pact.clusterers.common import clustering_from_roots, empty_clustering, floor_count
from pact.distance import normalize
from pact.lazy import lazy_module
from pact.registry import register_clusterer
from pact.tensors import Clustering

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class TomeConfig(ClustererConfig):
    """Settings of ToMe. Set exactly one of ``r`` and ``merge_ratio``."""

    r: int | None = Field(None, ge=0, strict=True)
    """Pairs merged per call (capped at the size of set A, ``ceil(n / 2)``)."""
    merge_ratio: float | None = Field(None, ge=0.0, le=0.5)
    """Pairs merged as a fraction of the row's tokens: ``r = floor(merge_ratio * n)``."""

    @model_validator(mode="after")
    def _one_amount(self) -> TomeConfig:
        if (self.r is None) == (self.merge_ratio is None):
            raise ValueError("set exactly one of r and merge_ratio")
        return self


def bipartite_soft_matching(features: Tensor, r: int) -> Tensor:
    """Roots after merging the ``r`` best A->B edges (A: even indices, B: odd indices)."""
    n = features.shape[0]
    roots = torch.arange(n, device=features.device)
    side_a, side_b = roots[0::2], roots[1::2]
    r = min(r, side_a.numel() if side_b.numel() else 0)
    if r == 0:
        return roots
    unit = normalize(features)
    similarity = unit[side_a] @ unit[side_b].T
    best_similarity, best_b = similarity.max(dim=1)
    merged_a = torch.sort(best_similarity, descending=True, stable=True).indices[:r]
    roots[side_a[merged_a]] = side_b[best_b[merged_a]]
    return roots


@register_clusterer("tome")
class Tome(Clusterer):
    """Merges exactly ``r`` tokens into their most similar partner of the other set."""

    Config = TomeConfig

    def pairs(self, n: int) -> int:
        if self.config.r is not None:
            return self.config.r
        return floor_count(self.config.merge_ratio, n)

    def cluster(self, features: Tensor, sizes: Tensor) -> Clustering:
        if features.shape[0] == 0:
            return empty_clustering(features.device)
        return clustering_from_roots(
            bipartite_soft_matching(features, self.pairs(features.shape[0]))
        )
