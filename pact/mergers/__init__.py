"""Mergers: fold clusters into tokens (built-ins registered by :mod:`pact.builtins`)."""

from pact.mergers.base import Merger, MergerConfig, RowMergeInput

__all__ = ["Merger", "MergerConfig", "RowMergeInput"]
