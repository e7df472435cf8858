"""pact: training-free visual token reduction (PACT) for vision-language models.

Components (scorers, clusterers, mergers) -> :mod:`pact.pipeline` -> the hook.
"""

from importlib import metadata as _metadata

from pact import builtin_components  # noqa: F401  (registers the built-in components)
from pact.clusterers.base import Clusterer, ClustererConfig
from pact.component import ComponentConfig
from pact.config import PactConfig, StageConfig
from pact.errors import ConfigError, UnknownComponentError, UnknownPresetError
from pact.mergers.base import Merger, MergerConfig, RowMergeInput
from pact.pipeline import Pipeline, reduce
from pact.presets import list_presets
from pact.registry import (
    CLUSTERERS,
    MERGERS,
    REGISTRIES,
    SCORERS,
    Registry,
    list_clusterers,
    list_mergers,
    list_scorers,
    register_clusterer,
    register_merger,
    register_scorer,
)
from pact.scorers.base import Scorer, ScorerConfig
from pact.tensors import (
    Budget,
    Clustering,
    LayerInputs,
    QKSource,
    Reduction,
    ReductionStats,
    RowReduction,
    TowerAttention,
)

DISTRIBUTION = "pact-vlm"  # the name on PyPI ("pact" there is another project)
# The version is written once, in pyproject.toml; the installed distribution reports it.
try:
    __version__ = _metadata.version(DISTRIBUTION)
except _metadata.PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"

_HOOK_EXPORTS = ("attach", "attached", "handle_of", "PactHandle")


def __getattr__(name: str):
    # The hook imports transformers (seconds); components and configs do not need it.
    if name in _HOOK_EXPORTS:
        from pact import hooks

        return getattr(hooks, name)
    raise AttributeError(f"module 'pact' has no attribute {name!r}")


def load_config(source="none", overrides=()) -> PactConfig:
    """Shorthand for :meth:`PactConfig.load`: a preset name, file, mapping or YAML text."""
    return PactConfig.load(source, overrides)


__all__ = [
    "CLUSTERERS",
    "MERGERS",
    "REGISTRIES",
    "SCORERS",
    "Budget",
    "Clusterer",
    "ClustererConfig",
    "Clustering",
    "ComponentConfig",
    "ConfigError",
    "LayerInputs",
    "Merger",
    "MergerConfig",
    "PactConfig",
    "PactHandle",
    "Pipeline",
    "QKSource",
    "Reduction",
    "ReductionStats",
    "Registry",
    "RowMergeInput",
    "RowReduction",
    "Scorer",
    "ScorerConfig",
    "StageConfig",
    "TowerAttention",
    "UnknownComponentError",
    "UnknownPresetError",
    "attach",
    "attached",
    "handle_of",
    "list_clusterers",
    "list_mergers",
    "list_presets",
    "list_scorers",
    "load_config",
    "reduce",
    "register_clusterer",
    "register_merger",
    "register_scorer",
]
