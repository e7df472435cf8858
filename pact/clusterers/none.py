"""The identity clusterer: every token is its own cluster (pruning-only configurations)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pact.clusterers.base import Clusterer, ClustererConfig
from pact.lazy import lazy_module
from pact.registry import register_clusterer
from pact.tensors import Clustering

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class NoneConfig(ClustererConfig):
    """The identity clusterer has no parameters."""


@register_clusterer("none")
class NoClustering(Clusterer):
    """Every token is its own cluster: ``labels = centers = arange(n)``."""

    Config = NoneConfig
    needs_features = False

    def cluster(self, features: Tensor, sizes: Tensor) -> Clustering:
        index = torch.arange(features.shape[0], device=features.device)
        return Clustering(labels=index, centers=index.clone())
