"""Clusterers: which visual tokens are redundant (built-ins registered by :mod:`pact.builtins`)."""

from pact.clusterers.base import Clusterer, ClustererConfig

__all__ = ["Clusterer", "ClustererConfig"]
