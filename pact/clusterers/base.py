"""The Clusterer protocol: group one row's kept visual tokens by their feature vectors."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, ClassVar

from pact.component import Component, ComponentConfig
from pact.tensors import Clustering

if TYPE_CHECKING:
    from torch import Tensor


class ClustererConfig(ComponentConfig):
    """Base config of clusterers."""

    def distance_bound(self) -> float | None:
        """Cosine distance within which a cluster's members lie of its center, if bounded.

        Retrieval of pruned tokens (radius ``alpha * bound``) needs one.
        """
        return None


class Clusterer(Component):
    """Assigns ``n`` tokens, given as ``[n, F]`` float32 features, to clusters."""

    Config: ClassVar[type[ClustererConfig]] = ClustererConfig
    needs_features: ClassVar[bool] = True
    """False if :meth:`cluster` ignores the features (the pipeline then skips making them)."""

    @abstractmethod
    def cluster(self, features: Tensor, sizes: Tensor) -> Clustering:
        """``features``: ``[n, F]`` float32; ``sizes``: ``[n]`` float32 current sizes."""
