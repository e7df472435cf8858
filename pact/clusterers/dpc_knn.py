"""DPC-kNN: density peaks clustering with a k-nearest-neighbour density, as SparseVLM
recycles pruned tokens (Zhang et al., ICML 2025, arXiv 2410.04417; the density of Du et al.,
"Study on density peaks clustering based on k-nearest neighbors and principal component
analysis", Knowledge-Based Systems 2016).

Distances are Euclidean divided by ``sqrt(F)`` (``F`` the feature width). A token's density
is ``exp(-mean of its squared distances to its k nearest tokens)``, itself among them (its
distance 0 counts, as in SparseVLM's code); its parent distance is the distance to the
nearest denser token, and the densest token gets the largest distance between any two
tokens. The ``int(n x cluster_ratio) + 1`` tokens with the largest density x parent
distance are the centers, and every token joins its nearest center.

Where pact differs from the official code: ties go to the lower index (of equal densities
the lower index counts as denser; of equal scores the lower index is the center; of equally
near centers the lower-index one is joined), where the official code adds random noise of
1e-6 to the densities: the answer is deterministic.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from pact.clusterers.base import Clusterer, ClustererConfig
from pact.clusterers.common import (
    clustering_from_roots,
    density_order,
    empty_clustering,
    floor_count,
)
from pact.clusterers.dpc import nearest_denser
from pact.lazy import lazy_module
from pact.registry import register_clusterer
from pact.tensors import Clustering

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class DpcKnnConfig(ClustererConfig):
    """Settings of DPC-kNN (SparseVLM's: 10% of the tokens + 1 clusters, k = clusters)."""

    cluster_ratio: float = Field(0.1, gt=0.0, le=1.0)
    """Clusters made: ``floor(n x cluster_ratio) + 1`` of ``n`` tokens, at most ``n``."""
    neighbours: int | None = Field(None, ge=1, strict=True)
    """Nearest tokens (the token itself included) whose distances make its density, at most
    ``n``; None: as many as there are clusters (SparseVLM's choice)."""


def scaled_distances(features: Tensor) -> Tensor:
    """``[n, n]`` Euclidean distances divided by ``sqrt(F)``, computed without the
    ``|a|^2 + |b|^2 - 2ab`` expansion (whose cancellation makes near-duplicates drift)."""
    width = max(features.shape[1], 1)
    distances = torch.cdist(
        features[None], features[None], compute_mode="donot_use_mm_for_euclid_dist"
    )[0]
    return distances / math.sqrt(width)


def knn_density(distances: Tensor, neighbours: int) -> Tensor:
    """``exp(-mean of the squared distances to the k nearest tokens)``, the token included."""
    nearest = torch.topk(distances, neighbours, dim=1, largest=False).values
    return torch.exp(-nearest.square().mean(dim=1))


@register_clusterer("dpc_knn")
class DpcKnn(Clusterer):
    """Centers: top density x parent distance; every token joins its nearest center."""

    Config = DpcKnnConfig

    def counts(self, n: int) -> tuple[int, int]:
        """``(clusters, neighbours)`` for ``n`` tokens."""
        clusters = min(n, floor_count(self.config.cluster_ratio, n) + 1)
        neighbours = self.config.neighbours or clusters
        return clusters, min(n, neighbours)

    def cluster(self, features: Tensor, sizes: Tensor) -> Clustering:
        n = features.shape[0]
        if n == 0:
            return empty_clustering(features.device)
        clusters, neighbours = self.counts(n)
        distances = scaled_distances(features.float())
        density = knn_density(distances, neighbours)
        order = density_order(density)
        delta, _ = nearest_denser(distances, order)
        delta[order[0]] = distances.max()
        score = density * delta
        centers = torch.sort(score, descending=True, stable=True).indices[:clusters]
        centers = torch.sort(centers).values  # ties in distance: the lower-index center
        roots = centers[distances[:, centers].argmin(dim=1)]
        roots[centers] = centers  # a center leads its own cluster, even beside a duplicate
        return clustering_from_roots(roots)
