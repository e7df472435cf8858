"""Modules imported on first use, so that ``import pact`` and the configs stay light.

``torch = lazy_module("torch")`` at the top of a module gives a stand-in for torch: the
first read of one of its attributes (``torch.zeros``) imports torch and copies its names
onto the stand-in, so later reads cost what they cost on the module itself. Until then
nothing is imported and ``"torch" not in sys.modules``: registering the built-in components
and validating configs need no torch, and ``pact --help`` answers at once.

Only runtime uses may go through the stand-in; annotations name ``Tensor`` under
``TYPE_CHECKING`` (every module uses ``from __future__ import annotations``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """A module object that imports the module it names on its first attribute read."""

    def __getattr__(self, name: str) -> Any:
        # Called only for names not yet copied: the first read, or a name the module
        # itself makes on demand (its own ``__getattr__``).
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, name)


def lazy_module(name: str) -> Any:
    """A stand-in for the module ``name`` that imports it on first attribute access."""
    return LazyModule(name)
