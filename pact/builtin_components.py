"""Importing this module registers every built-in component (``import pact`` does it)."""

from pact.clusterers import dbdpc, dpc, dpc_knn, kmeans, none, sklearn, tome
from pact.mergers import center, mean
from pact.scorers import attention, dart, divprune, euti, norm, random, sparsevlm, withdraw

BUILTIN_MODULES = (
    attention, dart, divprune, euti, norm, random, sparsevlm, withdraw,
    dbdpc, dpc, dpc_knn, kmeans, none, sklearn, tome,
    center, mean,
)  # fmt: skip
