"""VisionZip's contextual tokens: evenly spaced targets, each taking the tokens most similar to
it (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
CVPR 2025, https://github.com/dvlab-research/VisionZip).

Of ``n`` tokens (in their order in the image), the targets are every ``max(1, n // clusters)``-th
from the first, ``clusters`` of them; every other token joins the target whose feature is most
cosine-similar to its own (VisionZip's metric: the tower layer's keys averaged over heads,
``cluster_on: keys_mean``). With ``n <= clusters`` every token is its own target. Ties go to the
earlier target, as ``argmax`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from pact.clusterers.base import Clusterer, ClustererConfig
from pact.distance import normalize
from pact.lazy import lazy_module
from pact.registry import register_clusterer
from pact.tensors import Clustering

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class VisionZipClustersConfig(ClustererConfig):
    """Settings of VisionZip's contextual grouping."""

    clusters: int = Field(10, ge=1, strict=True)
    """Contextual tokens made of each row's tokens (the paper: 10 of LLaVA-1.5's 64-token
    budget, 20 of 128, 30 of 192)."""


@register_clusterer("visionzip")
class VisionZipClusters(Clusterer):
    """Evenly spaced targets and nearest-by-cosine members (see the module)."""

    Config = VisionZipClustersConfig

    def cluster(self, features: Tensor, sizes: Tensor) -> Clustering:
        n = features.shape[0]
        device = features.device
        step = max(1, n // self.config.clusters)
        targets = torch.arange(0, n, step, device=device)[: self.config.clusters]
        if n == 0:
            return Clustering(labels=targets, centers=targets.clone())
        unit = normalize(features.float())
        labels = (unit @ unit[targets].T).argmax(dim=1)
        labels[targets] = torch.arange(targets.numel(), device=device)
        return Clustering(labels=labels, centers=targets)
