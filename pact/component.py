"""What every registered component (scorer, clusterer, merger) has in common."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class ComponentConfig(BaseModel):
    """Base of every component's config: strict keys, docstrings as field descriptions.

    ``name`` is the registry tag that selects the component (a discriminated union whose
    members are whatever is registered, plugins included).
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    name: str
    """Registered name of the component this config selects."""


class Component:
    """A component is built from its validated config and holds no per-call state."""

    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    """The pydantic model of this component's settings; subclasses override it."""
    registered_name: ClassVar[str] = ""
    """Set by the registry decorator."""

    def __init__(self, config: ComponentConfig | dict[str, Any] | None = None):
        if config is None:
            config = {}
        if isinstance(config, dict):
            config = self.Config.model_validate({"name": self.registered_name, **config})
        if not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__} takes a {self.Config.__name__}; got {type(config).__name__}"
            )
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"
