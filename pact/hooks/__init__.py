"""The injection into a transformers decoder: attaching reduction to a loaded model.

Of pact's packages, these import transformers: this one (its handle and attention
wrapper), :mod:`pact.models` (the built-in VLMs and checkpoint loading), :mod:`pact.eval`
(lmms-eval's model) and the parts of :mod:`pact.bench` and :mod:`pact.cli` that run a model,
each when it runs. The core (components, configs, the pipeline, :mod:`pact.viz`) does not.

:mod:`pact.hooks.families`, the table of supported model families, imports neither torch
nor transformers, so the names below are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pact.hooks.handle import PactHandle, attach, attached, handle_of
    from pact.hooks.stats import HandleStats

_EXPORTS = {
    "HandleStats": "pact.hooks.stats",
    "PactHandle": "pact.hooks.handle",
    "attach": "pact.hooks.handle",
    "attached": "pact.hooks.handle",
    "handle_of": "pact.hooks.handle",
}


def __getattr__(name: str):
    # The handle imports transformers (seconds); the family table does not need it.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pact.hooks' has no attribute {name!r}")


__all__ = ["HandleStats", "PactHandle", "attach", "attached", "handle_of"]
