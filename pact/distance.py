"""Cosine distances in float32, shared by clusterers and by retrieval in mergers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


_EPS = 1e-12


def normalize(features: Tensor) -> Tensor:
    """Rows scaled to unit length in float32; an all-zero row stays zero (distance 1 to all)."""
    features = features.float()
    return features / features.norm(dim=-1, keepdim=True).clamp(min=_EPS)


def cosine_distances(features: Tensor) -> Tensor:
    """``[n, n]`` ``1 - cos``: clamped at 0, exactly symmetric, exactly 0 on the diagonal."""
    unit = normalize(features)
    distances = unit @ unit.T
    distances.neg_().add_(1.0).clamp_(min=0.0)  # in place: at most two n x n at a time
    # Matmul rounding may differ between (i, j) and (j, i); averaging makes the two equal.
    symmetric = distances + distances.T
    del distances
    symmetric.mul_(0.5).fill_diagonal_(0.0)
    return symmetric


def cross_cosine_distances(left: Tensor, right: Tensor) -> Tensor:
    """``[n, m]`` cosine distances between the rows of ``left`` and ``right``, clamped at 0."""
    return (1.0 - normalize(left) @ normalize(right).T).clamp(min=0.0)
