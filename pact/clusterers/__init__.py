"""Clusterers: which visual tokens are redundant.

The built-ins are registered by :mod:`pact.builtin_components`.
"""

from pact.clusterers.base import Clusterer, ClustererConfig

__all__ = ["Clusterer", "ClustererConfig"]
