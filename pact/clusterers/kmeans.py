"""k-means on unit-normalised features with faiss (optional backend ``pact-vlm[faiss]``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from pact.backends import require
from pact.clusterers.base import Clusterer, ClustererConfig
from pact.clusterers.common import ceil_count, clustering_from_roots, empty_clustering
from pact.distance import normalize
from pact.lazy import lazy_module
from pact.registry import register_clusterer
from pact.tensors import Clustering

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class KmeansConfig(ClustererConfig):
    """Settings of k-means."""

    keep_ratio: float = Field(0.5, gt=0.0, le=1.0)
    """Clusters asked for: ``k = ceil(keep_ratio * n)`` (empty ones are dropped)."""
    iterations: int = Field(20, ge=1, strict=True)
    """Lloyd iterations."""
    seed: int = Field(1234, strict=True)
    """Seed of faiss's initialisation."""


def representatives(unit: np.ndarray, centroids: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """For each token, the member of its cluster nearest (L2) to that cluster's centroid."""
    gap = ((unit - centroids[assignment]) ** 2).sum(axis=1)
    roots = np.empty(len(unit), dtype=np.int64)
    for cluster in np.unique(assignment):
        members = np.flatnonzero(assignment == cluster)
        roots[members] = members[np.argmin(gap[members])]
    return roots


@register_clusterer("kmeans")
class Kmeans(Clusterer):
    """Spherical k-means; the representative is the member nearest its centroid."""

    Config = KmeansConfig

    def __init__(self, config=None):
        super().__init__(config)
        self._faiss = require("faiss", "clusterer 'kmeans'")

    def cluster(self, features: Tensor, sizes: Tensor) -> Clustering:
        n, dim = features.shape
        if n == 0:
            return empty_clustering(features.device)
        k = ceil_count(self.config.keep_ratio, n)
        unit = np.ascontiguousarray(normalize(features).cpu().numpy(), dtype=np.float32)
        kmeans = self._faiss.Kmeans(
            dim,
            k,
            niter=self.config.iterations,
            seed=self.config.seed,
            spherical=True,
            min_points_per_centroid=1,
            max_points_per_centroid=max(n, 256),
        )
        kmeans.train(unit)
        _, assignment = kmeans.index.search(unit, 1)
        roots = representatives(unit, kmeans.centroids, assignment[:, 0])
        return clustering_from_roots(torch.from_numpy(roots).to(features.device))
