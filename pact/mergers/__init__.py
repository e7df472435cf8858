"""Mergers: fold clusters into tokens (built-ins registered by :mod:`pact.builtin_components`)."""

from pact.mergers.base import Merger, MergerConfig, RowMergeInput

__all__ = ["Merger", "MergerConfig", "RowMergeInput"]
