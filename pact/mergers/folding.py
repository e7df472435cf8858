"""Applying a clustering to one row: members, retrieval, sizes, positions, surviving slots.

Mergers differ only in the hidden state a cluster gets; everything else lives here, so an
assignment moves hidden states, positions and sizes alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pact.distance import cross_cosine_distances
from pact.lazy import lazy_module
from pact.mergers.base import PositionMode, RowMergeInput
from pact.tensors import RowReduction

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


@dataclass
class Members:
    """Every token that ends up in a cluster: its sequence slot and its cluster id."""

    slots: Tensor
    clusters: Tensor
    weights: Tensor
    center_slots: Tensor
    retrieved: int


def collect_members(row: RowMergeInput) -> Members:
    """Kept tokens with a label, plus pruned tokens retrieved into their nearest center."""
    labels, centers = row.clustering.labels, row.clustering.centers
    kept_slots = row.visual[row.kept]
    assigned = labels >= 0
    slots, clusters = kept_slots[assigned], labels[assigned]
    retrieved = 0
    if row.retrieval_radius is not None and row.pruned.numel() and centers.numel():
        distances = cross_cosine_distances(row.pruned_features, row.kept_features[centers])
        nearest_distance, nearest = distances.min(dim=1)
        taken = nearest_distance <= row.retrieval_radius
        retrieved = int(taken.sum())
        slots = torch.cat([slots, row.visual[row.pruned[taken]]])
        clusters = torch.cat([clusters, nearest[taken]])
    return Members(
        slots=slots,
        clusters=clusters,
        weights=row.sizes[slots].float(),
        center_slots=kept_slots[centers],
        retrieved=retrieved,
    )


def cluster_sums(clusters: Tensor, values: Tensor, weights: Tensor, n_clusters: int) -> Tensor:
    """``[C, ...]`` weighted sums of ``values`` (in float32) over each cluster's members."""
    weighted = values.float() * weights.view(-1, *([1] * (values.dim() - 1)))
    out = torch.zeros(n_clusters, *values.shape[1:], device=values.device, dtype=torch.float32)
    return out.index_add_(0, clusters, weighted)


def cluster_positions(
    row: RowMergeInput, members: Members, cluster_size: Tensor, mode: PositionMode
) -> Tensor:
    """Position of each merged token: its center's, or the size-weighted rounded mean."""
    if mode == "mean":
        positions = row.positions[members.slots]
        mean = cluster_sums(members.clusters, positions, members.weights, cluster_size.numel())
        return torch.round(mean / cluster_size[:, None]).to(row.positions.dtype)
    return row.positions[members.center_slots]


def renumber(positions: Tensor, real: Tensor) -> Tensor:
    """Real tokens numbered contiguously from the first real token's position."""
    if not bool(real.any()):
        return positions
    first = positions[real][0]
    rank = torch.cumsum(real.long(), dim=0) - 1
    return torch.where(real[:, None], first[None, :] + rank[:, None], positions)


ClusterHidden = Callable[[RowMergeInput, Members, "Tensor"], "Tensor"]
"""``(row, members, cluster_size) -> [C, D]`` hidden state of each cluster's token."""


def fold_row(row: RowMergeInput, cluster_hidden: ClusterHidden) -> RowReduction:
    """One row's surviving slots: every non-visual slot, plus one slot per cluster."""
    members = collect_members(row)
    n_clusters = members.center_slots.numel()
    cluster_size = torch.zeros(n_clusters, device=row.hidden.device).index_add_(
        0, members.clusters, members.weights
    )
    is_visual = torch.zeros_like(row.padding_mask)
    is_visual[row.visual] = True
    other_slots = torch.nonzero(~is_visual).flatten()
    slots = torch.cat([other_slots, members.center_slots])
    hidden = torch.cat([row.hidden[other_slots], cluster_hidden(row, members, cluster_size)])
    sizes = torch.cat([row.sizes[other_slots].float(), cluster_size])
    center_positions = cluster_positions(row, members, cluster_size, row.position_mode)
    positions = torch.cat([row.positions[other_slots], center_positions])
    order = torch.argsort(slots)
    slots, positions = slots[order], positions[order]
    if row.position_mode == "renumber":
        positions = renumber(positions, row.padding_mask[slots])
    # Members (kept, or retrieved) point at their center's slot; the rest of the visual
    # tokens were removed; every other slot survives as itself.
    assignment = torch.full_like(row.padding_mask, -1, dtype=torch.long)
    assignment[other_slots] = other_slots
    assignment[members.slots] = members.center_slots[members.clusters]
    return RowReduction(
        slots=slots,
        hidden=hidden[order].to(row.hidden.dtype),
        sizes=sizes[order],
        positions=positions,
        retrieved=members.retrieved,
        assignment=assignment,
    )
