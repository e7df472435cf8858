"""DBDPC: distance-bounded density peak clustering, PACT's clusterer, in its batched form."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from pact.clusterers.base import Clusterer, ClustererConfig
from pact.clusterers.common import density_order, empty_clustering, gaussian_density
from pact.distance import cosine_distances
from pact.registry import register_clusterer
from pact.tensors import Clustering


class DbdpcConfig(ClustererConfig):
    """Settings of DBDPC."""

    cutoff: float = Field(0.21, ge=0.0, le=2.0)
    """Cosine distance bound: centers are farther apart than this, members at most this far."""
    dc: float = Field(2.0, gt=0.0)
    """Bandwidth of the Gaussian density ``sum_j exp(-(d_ij/dc)^2)``; only its order matters."""

    def distance_bound(self) -> float:
        return self.cutoff


def dbdpc_centers(distances: Tensor, order: Tensor, cutoff: float) -> Tensor:
    """Centers of DBDPC (ascending token indices), found in batched rounds.

    Each round, among tokens not yet covered, every token with no denser uncovered token
    within ``cutoff`` is a center; then every token within ``cutoff`` of a new center is
    covered. This picks exactly the tokens that the sequential definition (visit in density
    order, become a center if farther than ``cutoff`` from all centers so far) picks.
    """
    ranked = distances[order][:, order]  # row/column r = r-th densest token
    n = ranked.shape[0]
    denser_only = ranked.masked_fill(
        torch.ones(n, n, dtype=torch.bool, device=ranked.device).triu(), float("inf")
    )
    uncovered = torch.arange(n, device=ranked.device)
    is_center = torch.zeros(n, dtype=torch.bool, device=ranked.device)
    while uncovered.numel():
        nearest_denser = denser_only[uncovered][:, uncovered].amin(dim=1)
        new_centers = uncovered[nearest_denser > cutoff]
        is_center[new_centers] = True
        covered = (ranked[uncovered][:, new_centers] <= cutoff).any(dim=1)
        uncovered = uncovered[~covered]
    return torch.sort(order[is_center]).values


@register_clusterer("dbdpc")
class Dbdpc(Clusterer):
    """Density peaks with a hard distance bound; every token joins its nearest center."""

    Config = DbdpcConfig

    def cluster(self, features: Tensor, sizes: Tensor) -> Clustering:
        if features.shape[0] == 0:
            return empty_clustering(features.device)
        distances = cosine_distances(features)
        order = density_order(gaussian_density(distances, self.config.dc))
        centers = dbdpc_centers(distances, order, self.config.cutoff)
        labels = distances[:, centers].argmin(dim=1)
        return Clustering(labels=labels, centers=centers)
