"""DBDPC: distance-bounded density peak clustering, PACT's clusterer, in its batched form.

The batched rounds work on masks: each round is two matrix-vector products with a
precomputed ``denser neighbour`` matrix, and nothing in a round reads a value back to the
host. Every ``check_every`` rounds one host synchronisation checks termination and
compacts the matrix to the tokens still uncovered, so a GPU runs the rounds back to back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from pact.clusterers.base import Clusterer, ClustererConfig
from pact.clusterers.common import density_order, empty_clustering, gaussian_density
from pact.distance import cosine_distances
from pact.lazy import lazy_module
from pact.registry import register_clusterer
from pact.tensors import Clustering

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")

CHECK_EVERY = 4
"""Rounds between host synchronisations (termination check and compaction). Extra rounds
after the last token is covered change nothing, so any value gives the same result."""
_BLOCK_ELEMENTS = {"cpu": 2**18}
"""Elements of the neighbour matrix built per block: cache-sized on CPU, else one block of
at most 2**26 elements (bounds the boolean temporaries on accelerators)."""
_DEFAULT_BLOCK_ELEMENTS = 2**26


class DbdpcConfig(ClustererConfig):
    """Settings of DBDPC."""

    cutoff: float = Field(0.21, ge=0.0, le=2.0)
    """Cosine distance bound: centers are farther apart than this, members at most this far."""
    dc: float = Field(2.0, gt=0.0)
    """Bandwidth of the Gaussian density ``sum_j exp(-(d_ij/dc)^2)``; only its order matters."""

    def distance_bound(self) -> float:
        return self.cutoff


def denser_neighbours(distances: Tensor, rank: Tensor, cutoff: float) -> Tensor:
    """``[n, n]`` float16: 1 where token ``j`` is denser than ``i`` and ``d_ij <= cutoff``.

    ``rank[i]`` is the place of token ``i`` in the density order (0: densest). float16
    because products with 0/1 vectors only need to tell zero from positive: a sum of
    non-negative terms is zero exactly when every term is, whatever the rounding.
    """
    n = distances.shape[0]
    device = distances.device
    neighbours = torch.empty(n, n, dtype=torch.float16, device=device)
    block = _BLOCK_ELEMENTS.get(device.type, _DEFAULT_BLOCK_ELEMENTS)
    rows = max(1, block // max(n, 1))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        close = distances[start:stop] <= cutoff
        close &= rank[None, :] < rank[start:stop, None]
        neighbours[start:stop] = close
    return neighbours


def _rounds(neighbours: Tensor, uncovered: Tensor, centers: Tensor, count: int) -> None:
    """``count`` batched rounds on the masks ``uncovered`` and ``centers`` (in place).

    A round: every uncovered token with no uncovered denser token within ``cutoff`` is a
    center; every uncovered token within ``cutoff`` of a new center is covered. A new center
    within ``cutoff`` of an uncovered token is always the denser of the two (else that token
    would block it), so one direction of the neighbour matrix suffices.
    """
    dtype = neighbours.dtype
    for _ in range(count):
        blocked = torch.mv(neighbours, uncovered.to(dtype)) > 0
        new = uncovered & ~blocked
        covered = new | (torch.mv(neighbours, new.to(dtype)) > 0)
        uncovered &= ~covered
        centers |= new


def dbdpc_centers(
    distances: Tensor, order: Tensor, cutoff: float, check_every: int = CHECK_EVERY
) -> Tensor:
    """Centers of DBDPC (ascending token indices), found in batched rounds.

    Each round, among tokens not yet covered, every token with no denser uncovered token
    within ``cutoff`` is a center; then every token within ``cutoff`` of a new center is
    covered. This picks exactly the tokens that the sequential definition (visit in density
    order, become a center if farther than ``cutoff`` from all centers so far) picks.
    The host reads a value back once every ``check_every`` rounds.
    """
    if check_every < 1:
        raise ValueError(f"check_every must be at least 1; got {check_every}")
    n = distances.shape[0]
    device = distances.device
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=device)
    neighbours = denser_neighbours(distances, rank, cutoff)
    is_center = torch.zeros(n, dtype=torch.bool, device=device)
    alive = torch.arange(n, device=device)  # original index of each working-set token
    while alive.numel():
        uncovered = torch.ones(alive.numel(), dtype=torch.bool, device=device)
        centers = torch.zeros_like(uncovered)
        _rounds(neighbours, uncovered, centers, check_every)
        is_center[alive] = centers  # working-set tokens were never centers before
        keep = torch.nonzero(uncovered).flatten()  # the one host synchronisation
        if keep.numel() == 0:
            break
        alive = alive[keep]
        neighbours = neighbours.index_select(0, keep).index_select(1, keep)
    return torch.nonzero(is_center).flatten()


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
