"""DBSCAN and agglomerative clustering via scikit-learn (optional backend ``pact-vlm[sklearn]``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from pact.backends import require
from pact.clusterers.base import Clusterer, ClustererConfig
from pact.clusterers.common import (
    ceil_count,
    clustering_from_roots,
    empty_clustering,
    medoid_roots,
)
from pact.distance import cosine_distances, normalize
from pact.lazy import lazy_module
from pact.registry import register_clusterer
from pact.tensors import Clustering

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class DbscanConfig(ClustererConfig):
    """Settings of DBSCAN on cosine distances."""

    eps: float = Field(0.1, gt=0.0, le=2.0)
    """Neighbourhood radius (cosine distance)."""
    min_samples: int = Field(2, ge=1, strict=True)
    """Neighbours (self included) that make a core point."""
    noise_as_clusters: bool = True
    """True: each noise point is its own cluster; False: noise points are removed."""


class AgglomerativeConfig(ClustererConfig):
    """Settings of agglomerative clustering. Set exactly one of the two stopping rules."""

    linkage: Literal["single", "complete", "average", "ward"] = "single"
    """Linkage criterion; ``ward`` works on unit-normalised features (Euclidean)."""
    keep_ratio: float | None = Field(None, gt=0.0, le=1.0)
    """Stop at ``ceil(keep_ratio * n)`` clusters."""
    distance_threshold: float | None = Field(None, ge=0.0)
    """Stop merging when the linkage distance exceeds this."""

    @model_validator(mode="after")
    def _one_rule(self) -> AgglomerativeConfig:
        if (self.keep_ratio is None) == (self.distance_threshold is None):
            raise ValueError("set exactly one of keep_ratio and distance_threshold")
        return self


def _from_labels(distances: Tensor, labels: np.ndarray) -> Clustering:
    """Relabel scikit-learn's labels with medoid representatives (-1 stays dropped)."""
    label_tensor = torch.from_numpy(labels.astype(np.int64)).to(distances.device)
    return clustering_from_roots(medoid_roots(distances, label_tensor))


@register_clusterer("dbscan")
class Dbscan(Clusterer):
    """scikit-learn's DBSCAN on the precomputed cosine distances; medoids represent."""

    Config = DbscanConfig

    def __init__(self, config=None):
        super().__init__(config)
        self._cluster = require("sklearn.cluster", "clusterer 'dbscan'")

    def cluster(self, features: Tensor, sizes: Tensor) -> Clustering:
        if features.shape[0] == 0:
            return empty_clustering(features.device)
        distances = cosine_distances(features)
        model = self._cluster.DBSCAN(
            eps=self.config.eps, min_samples=self.config.min_samples, metric="precomputed"
        )
        labels = model.fit_predict(distances.double().cpu().numpy())
        if self.config.noise_as_clusters:
            noise = np.flatnonzero(labels < 0)
            labels[noise] = labels.max(initial=-1) + 1 + np.arange(noise.size)
        return _from_labels(distances, labels)


@register_clusterer("agglomerative")
class Agglomerative(Clusterer):
    """scikit-learn's agglomerative clustering on cosine distances; medoids represent."""

    Config = AgglomerativeConfig

    def __init__(self, config=None):
        super().__init__(config)
        self._cluster = require("sklearn.cluster", "clusterer 'agglomerative'")

    def cluster(self, features: Tensor, sizes: Tensor) -> Clustering:
        n = features.shape[0]
        if n == 0:
            return empty_clustering(features.device)
        distances = cosine_distances(features)
        if n == 1:
            return _from_labels(distances, np.zeros(1, dtype=np.int64))
        labels = self.fit(distances, features, n)
        return _from_labels(distances, labels)

    def fit(self, distances: Tensor, features: Tensor, n: int) -> np.ndarray:
        config = self.config
        n_clusters = None if config.keep_ratio is None else ceil_count(config.keep_ratio, n)
        if config.linkage == "ward":
            data, metric = normalize(features).double().cpu().numpy(), "euclidean"
        else:
            data, metric = distances.double().cpu().numpy(), "precomputed"
        model = self._cluster.AgglomerativeClustering(
            n_clusters=n_clusters,
            distance_threshold=config.distance_threshold,
            metric=metric,
            linkage=config.linkage,
        )
        return model.fit_predict(data)
