"""Scorers: which visual tokens matter (built-ins are registered by :mod:`pact.builtins`)."""

from pact.scorers.base import Scorer, ScorerConfig

__all__ = ["Scorer", "ScorerConfig"]
