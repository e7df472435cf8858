"""Optional backends, imported lazily behind an availability check."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

_EXTRAS = {"faiss": "faiss", "sklearn": "sklearn", "flash_attn": "flash", "submitit": "sweep"}


def available(module: str) -> bool:
    """Whether the top-level package of ``module`` is installed (nothing is imported)."""
    return importlib.util.find_spec(module.split(".")[0]) is not None


def require(module: str, needed_by: str) -> ModuleType:
    """Import ``module`` or fail with the install command that provides it."""
    if not available(module):
        top = module.split(".")[0]
        extra = _EXTRAS.get(top, top)
        raise ImportError(
            f"{needed_by} needs the optional package {top!r}; install it with "
            f"`pip install 'pact-vlm[{extra}]'`"
        )
    return importlib.import_module(module)
