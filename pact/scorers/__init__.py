"""Scorers: which visual tokens matter (built-ins: registered by :mod:`pact.builtin_components`)."""

from pact.scorers.base import Scorer, ScorerConfig

__all__ = ["Scorer", "ScorerConfig"]
