"""The component fields of pact's configs: a ``name`` tag picks the registered class.

The union of component configs is open (plugins register more), so each field validates by
looking the name up in its registry; every error names the known components.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import PlainValidator, SerializeAsAny
from pydantic_core import PydanticCustomError

from pact.clusterers.base import ClustererConfig
from pact.component import ComponentConfig
from pact.errors import UnknownComponentError
from pact.mergers.base import MergerConfig
from pact.registry import CLUSTERERS, MERGERS, SCORERS, Registry
from pact.scorers.base import ScorerConfig


def component_field(registry: Registry):
    """Validator that picks the component config class by the ``name`` tag."""

    def validate(value: Any) -> ComponentConfig:
        if isinstance(value, str):  # shorthand: `clusterer: dbdpc`
            value = {"name": value}
        if isinstance(value, ComponentConfig):
            value = value.model_dump()
        if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
            raise PydanticCustomError(
                "component",
                "expected a {kind} name or a mapping with a 'name' key; known {kind}s: {known}",
                {"kind": registry.kind, "known": ", ".join(registry.names())},
            )
        try:
            cls = registry.get(value["name"])
        except UnknownComponentError as error:
            raise PydanticCustomError("unknown_component", str(error)) from None
        return cls.Config.model_validate(dict(value))

    return PlainValidator(validate, json_schema_input_type=dict[str, Any])


ScorerField = Annotated[SerializeAsAny[ScorerConfig], component_field(SCORERS)]
ClustererField = Annotated[SerializeAsAny[ClustererConfig], component_field(CLUSTERERS)]
MergerField = Annotated[SerializeAsAny[MergerConfig], component_field(MERGERS)]


def default_component(registry: Registry, name: str):
    return lambda: registry.get(name).Config(name=name)
