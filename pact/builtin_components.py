"""Importing this module registers every built-in component (``import pact`` does it)."""

from pact.clusterers import dbdpc, dpc, dpc_knn, kmeans, none, sklearn, tome
from pact.clusterers import visionzip as visionzip_clusters
from pact.mergers import center, mean
from pact.mergers import visionzip as visionzip_merge
from pact.scorers import (
    attention,
    dart,
    divprune,
    euti,
    norm,
    random,
    sparsevlm,
    visionzip,
    withdraw,
)  # fmt: skip

BUILTIN_MODULES = (
    attention, dart, divprune, euti, norm, random, sparsevlm, visionzip, withdraw,
    dbdpc, dpc, dpc_knn, kmeans, none, sklearn, tome, visionzip_clusters,
    center, mean, visionzip_merge,
)  # fmt: skip
