"""Importing this module registers every built-in component (``import pact`` does it)."""

from pact.clusterers import dbdpc, dpc, kmeans, none, sklearn, tome
from pact.mergers import center, mean
from pact.scorers import attention, dart, divprune, euti, norm, random, withdraw

BUILTIN_MODULES = (
    attention, dart, divprune, euti, norm, random, withdraw,
    dbdpc, dpc, kmeans, none, sklearn, tome,
    center, mean,
)  # fmt: skip
