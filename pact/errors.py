"""pact's exceptions: each message names the offending field or argument and what is allowed."""

from __future__ import annotations


class UnknownNameError(KeyError):
    """A name (component, preset) that nothing is registered under; lists the known ones."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class UnknownComponentError(UnknownNameError):
    """No scorer, clusterer or merger is registered under this name."""


class UnknownPresetError(UnknownNameError):
    """No preset has this name."""


class ConfigError(ValueError):
    """A configuration failed validation; the message lists ``field.path: problem`` lines."""
