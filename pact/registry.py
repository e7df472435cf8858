"""One small generic registry, instantiated once per component kind.

Names are open strings. Built-ins register at import; third-party packages either use the
decorators or declare an entry point in the groups ``pact.scorers``, ``pact.clusterers``,
``pact.mergers`` (``name = "package.module:Class"``), discovered on first lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from pact.clusterers.base import Clusterer
from pact.component import Component
from pact.errors import UnknownComponentError
from pact.mergers.base import Merger
from pact.scorers.base import Scorer

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Component)


class Registry(Generic[C]):
    """Maps names to component classes of one kind (``base``)."""

    def __init__(self, kind: str, base: type[C], entry_point_group: str):
        self.kind = kind
        self.base = base
        self.entry_point_group = entry_point_group
        self._classes: dict[str, type[C]] = {}
        self._entry_points_loaded = False

    def register(
        self, name: str, cls: type[C] | None = None, *, override: bool = False
    ) -> Callable[[type[C]], type[C]] | type[C]:
        """Register ``cls`` under ``name``; without ``cls``, return a class decorator.

        A taken name is refused unless ``override=True``.
        """
        if cls is None:
            return lambda klass: self._add(name, klass, override)
        return self._add(name, cls, override)

    def _add(self, name: str, cls: type[C], override: bool) -> type[C]:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.kind} name must be an identifier-like string; got {name!r}")
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{self.kind} {name!r} must be a subclass of {self.base.__name__}")
        if not issubclass(cls.Config, self.base.Config):
            raise TypeError(
                f"{self.kind} {name!r}: its Config must subclass {self.base.Config.__name__}"
            )
        taken = self._classes.get(name)
        if taken is not None and taken is not cls and not override:
            raise ValueError(
                f"{self.kind} name {name!r} is already registered to "
                f"{taken.__module__}.{taken.__qualname__}; pass override=True to replace it"
            )
        cls.registered_name = name
        self._classes[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove a name (tests and notebooks re-registering a class)."""
        self._classes.pop(name, None)

    def get(self, name: str) -> type[C]:
        """The class registered under ``name``; unknown names list the known ones."""
        if name not in self._classes:
            self.load_entry_points()
        if name not in self._classes:
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}"
            )
        return self._classes[name]

    def names(self) -> list[str]:
        """Sorted names of every registered component, entry-point plugins included."""
        self.load_entry_points()
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def load_entry_points(self, force: bool = False) -> None:
        """Import every plugin advertised in this kind's entry-point group.

        Done once; a plugin that fails to import is an error naming it (and is retried at
        the next lookup), never skipped.
        """
        if self._entry_points_loaded and not force:
            return
        for point in entry_points(group=self.entry_point_group):
            try:
                cls = point.load()
            except Exception as error:
                raise ImportError(
                    f"pact plugin {point.name!r} ({point.value}) in entry-point group "
                    f"{self.entry_point_group!r} failed to import: {error}"
                ) from error
            # A plugin module may already have registered itself with the decorator.
            if self._classes.get(point.name) is not cls:
                self._add(point.name, cls, override=False)
            log.debug("loaded %s %r from %s", self.kind, point.name, point.value)
        self._entry_points_loaded = True


SCORERS: Registry[Scorer] = Registry("scorer", Scorer, "pact.scorers")
CLUSTERERS: Registry[Clusterer] = Registry("clusterer", Clusterer, "pact.clusterers")
MERGERS: Registry[Merger] = Registry("merger", Merger, "pact.mergers")

REGISTRIES = {"scorer": SCORERS, "clusterer": CLUSTERERS, "merger": MERGERS}


def register_scorer(name: str, *, override: bool = False):
    """Class decorator: ``@register_scorer("mine")`` on a :class:`Scorer` subclass."""
    return SCORERS.register(name, override=override)


def register_clusterer(name: str, *, override: bool = False):
    """Class decorator: ``@register_clusterer("mine")`` on a :class:`Clusterer` subclass."""
    return CLUSTERERS.register(name, override=override)


def register_merger(name: str, *, override: bool = False):
    """Class decorator: ``@register_merger("mine")`` on a :class:`Merger` subclass."""
    return MERGERS.register(name, override=override)


def list_scorers() -> list[str]:
    return SCORERS.names()


def list_clusterers() -> list[str]:
    return CLUSTERERS.names()


def list_mergers() -> list[str]:
    return MERGERS.names()
