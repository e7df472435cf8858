"""DPC: classic density peaks clustering (Rodriguez & Laio, Science 2014)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from pact.clusterers.base import Clusterer, ClustererConfig
from pact.clusterers.common import (
    ceil_count,
    clustering_from_roots,
    density_order,
    empty_clustering,
    follow_to_root,
    gaussian_density,
)
from pact.distance import cosine_distances
from pact.lazy import lazy_module
from pact.registry import register_clusterer
from pact.tensors import Clustering

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class DpcConfig(ClustererConfig):
    """Settings of density peaks clustering."""

    keep_ratio: float = Field(0.5, gt=0.0, le=1.0)
    """Clusters made: ``ceil(keep_ratio * n)`` tokens with the largest ``rho * delta``."""
    dc: float | None = Field(None, gt=0.0)
    """Density bandwidth; None: the classic rule, the 2% quantile of pairwise distances."""
    dc_quantile: float = Field(0.02, gt=0.0, lt=1.0)
    """Quantile of pairwise distances used as bandwidth when ``dc`` is None."""


def linear_quantile(values: Tensor, q: float) -> float:
    """``numpy.quantile``'s default (linear) quantile of a 1-D tensor of any size.

    ``torch.quantile`` refuses more than 2**24 elements, fewer than the n**2 distances of
    n = 5000 tokens; selecting the two neighbouring order statistics has no such limit.
    """
    position = q * (values.numel() - 1)
    low, high = math.floor(position), math.ceil(position)
    low_value = float(torch.kthvalue(values, low + 1).values)
    high_value = float(torch.kthvalue(values, high + 1).values)
    return low_value + (position - low) * (high_value - low_value)


def nearest_denser(distances: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
    """For each token, the distance to and index of its nearest denser token.

    The densest token gets the largest distance in its row and itself as parent.
    """
    n = distances.shape[0]
    ranked = distances[order][:, order]
    ranked = ranked.masked_fill(
        torch.ones(n, n, dtype=torch.bool, device=ranked.device).triu(), float("inf")
    )
    delta_ranked, parent_ranked = ranked.min(dim=1)
    delta = torch.empty_like(delta_ranked)
    parent = torch.empty_like(parent_ranked)
    delta[order] = delta_ranked
    parent[order] = order[parent_ranked]
    densest = order[0]
    delta[densest] = distances[densest].max()
    parent[densest] = densest
    return delta, parent


@register_clusterer("dpc")
class Dpc(Clusterer):
    """Centers: top ``rho * delta``; every other token follows its nearest denser token."""

    Config = DpcConfig

    def bandwidth(self, distances: Tensor) -> float:
        if self.config.dc is not None:
            return self.config.dc
        n = distances.shape[0]
        off_diagonal = distances[~torch.eye(n, dtype=torch.bool, device=distances.device)]
        if off_diagonal.numel() == 0:
            return 1.0
        return max(linear_quantile(off_diagonal, self.config.dc_quantile), 1e-6)

    def cluster(self, features: Tensor, sizes: Tensor) -> Clustering:
        n = features.shape[0]
        if n == 0:
            return empty_clustering(features.device)
        distances = cosine_distances(features)
        density = gaussian_density(distances, self.bandwidth(distances))
        order = density_order(density)
        delta, parent = nearest_denser(distances, order)
        n_centers = ceil_count(self.config.keep_ratio, n)
        gamma = density * delta
        gamma[order[0]] = float("inf")  # the densest token always leads a cluster
        centers = torch.sort(gamma, descending=True, stable=True).indices[:n_centers]
        parent[centers] = centers
        return clustering_from_roots(follow_to_root(parent))
