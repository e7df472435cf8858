"""The Merger protocol: apply a clustering to one row's hidden states, positions and sizes."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from pact.component import Component, ComponentConfig
from pact.tensors import Clustering, RowReduction

if TYPE_CHECKING:
    from torch import Tensor

PositionMode = Literal["keep", "mean", "renumber"]


class MergerConfig(ComponentConfig):
    """Base config of mergers."""


@dataclass
class RowMergeInput:
    """Everything a merger sees of one row.

    Indices: ``visual[kept]`` and ``visual[pruned]`` are sequence slots; the clustering's
    labels and centers index into ``kept``.
    """

    hidden: Tensor
    """``[N, D]`` the row's hidden states."""
    sizes: Tensor
    """``[N]`` float32 current sizes."""
    positions: Tensor
    """``[N, C]`` position ids."""
    padding_mask: Tensor
    """``[N]`` bool, True at real tokens."""
    visual: Tensor
    """``[V]`` sequence slots of the row's visual tokens."""
    kept: Tensor
    """``[K]`` indices into ``visual`` that the scorer kept (ascending)."""
    pruned: Tensor
    """``[V - K]`` indices into ``visual`` that the scorer pruned (ascending)."""
    clustering: Clustering
    """Assignment of the kept tokens."""
    kept_features: Tensor
    """``[K, F]`` float32 features of the kept tokens (what the clusterer saw)."""
    pruned_features: Tensor
    """``[V - K, F]`` float32 features of the pruned tokens (for retrieval)."""
    retrieval_radius: float | None
    """Cosine distance within which a pruned token joins its nearest center; None: off."""
    position_mode: PositionMode
    """How a merged token's position is set: center's, rounded mean, or renumbered."""


class Merger(Component):
    """Folds each cluster into one token at its center's slot."""

    Config: ClassVar[type[MergerConfig]] = MergerConfig

    @abstractmethod
    def merge(self, row: RowMergeInput) -> RowReduction:
        """Return the surviving slots of the row with their new hidden states."""
