"""Pieces several clusterers share: densities, representatives, label bookkeeping."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pact.lazy import lazy_module
from pact.tensors import Clustering

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")

# Guards ceil()/floor() against products such as 0.55 * 100 = 55.00000000000001.
_RATIO_SLACK = 1e-9


def ceil_count(ratio: float, n: int) -> int:
    """``ceil(ratio * n)`` of the exact product, at least 1 and at most ``n`` (0 if ``n`` is)."""
    return min(n, max(1, math.ceil(ratio * n - _RATIO_SLACK)))


def floor_count(ratio: float, n: int) -> int:
    """``floor(ratio * n)`` of the exact product (float error in the product ignored)."""
    return math.floor(ratio * n + _RATIO_SLACK)


def empty_clustering(device: torch.device) -> Clustering:
    nothing = torch.zeros(0, dtype=torch.long, device=device)
    return Clustering(labels=nothing, centers=nothing.clone())


def clustering_from_roots(roots: Tensor) -> Clustering:
    """Turn ``roots[i]`` (the representative token of ``i``'s cluster, -1: dropped) into labels.

    Clusters are numbered by ascending representative index.
    """
    kept = roots >= 0
    centers = torch.unique(roots[kept])  # sorted
    labels = torch.full_like(roots, -1)
    labels[kept] = torch.searchsorted(centers, roots[kept])
    return Clustering(labels=labels, centers=centers)


def gaussian_density(distances: Tensor, bandwidth: float) -> Tensor:
    """``rho[i] = sum_j exp(-(d_ij / bandwidth)^2)`` in float32 (one n x n temporary)."""
    scaled = distances / bandwidth
    return scaled.square_().neg_().exp_().sum(dim=1)


def density_order(density: Tensor) -> Tensor:
    """Token indices from densest to sparsest; equal densities: lower index first."""
    return torch.sort(density, descending=True, stable=True).indices


def medoid_roots(distances: Tensor, labels: Tensor) -> Tensor:
    """Each token's cluster medoid (member with least summed distance to the members).

    ``labels`` in ``[-1, C)``; -1 stays -1. Ties go to the lower index.
    """
    roots = torch.full_like(labels, -1)
    member = labels >= 0
    if not bool(member.any()):
        return roots
    n_clusters = int(labels.max()) + 1
    one_hot = torch.zeros(labels.numel(), n_clusters, device=labels.device)
    one_hot[member, labels[member]] = 1.0
    spread = distances @ one_hot  # [n, C] summed distance from i to cluster c
    spread = spread.masked_fill(one_hot == 0, float("inf"))
    medoids = spread.argmin(dim=0)  # [C]
    roots[member] = medoids[labels[member]]
    return roots


def follow_to_root(parent: Tensor) -> Tensor:
    """Pointer jumping: every entry follows ``parent`` until a fixed point (a root)."""
    while True:
        grand = parent[parent]
        if torch.equal(grand, parent):
            return parent
        parent = grand
