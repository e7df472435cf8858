"""The configuration reference, as markdown, generated from the live pydantic models.

Walks :data:`pact.REGISTRIES` (plugins included) and the stage/schedule configs, so the
documentation site's reference page is rebuilt from the code at every build and cannot
drift from it. ``python -m pact.reference`` prints the page.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from pact.clusterers.base import Clusterer, ClustererConfig
from pact.component import Component, ComponentConfig
from pact.config import PactConfig, StageConfig
from pact.mergers.base import MergerConfig
from pact.presets import list_presets, preset_text
from pact.registry import REGISTRIES, Registry
from pact.scorers.base import Scorer, ScorerConfig

# A component field of StageConfig shows as a link to that kind's section of the page.
_COMPONENT_BASES = {ScorerConfig: "scorer", ClustererConfig: "clusterer", MergerConfig: "merger"}
# Bounds as annotated_types stores them, with the symbol each reads as (``bound sym field``).
_LOWER = ((at.Ge, "ge", "≤"), (at.Gt, "gt", "<"))
_UPPER = ((at.Le, "le", "≤"), (at.Lt, "lt", "<"))
# Models with a section of their own on the page: a field of that type links there.
_MODEL_ANCHORS = {PactConfig: "pactconfig", StageConfig: "stageconfig"}

INTRO = """\
# Configuration reference

Every setting pact accepts, generated from its pydantic models by `pact/reference.py`
each time this site is built (`python -m pact.reference` prints this page), so it always
matches the code. It lists every component registered where the site was built,
entry-point plugins included. How stages, overrides and presets fit together:
[Configuration](configuration.md).

A component is written as its name (`clusterer: dbdpc`) or as a mapping of its `name`
and its own fields (`clusterer: {name: dbdpc, cutoff: 0.3}`); omitted fields take the
defaults below. Unknown keys and out-of-range values are errors naming the field path.
"""


@dataclass(frozen=True)
class FieldDoc:
    """One row of a settings table."""

    name: str
    type: str
    default: str
    range: str
    description: str


def type_label(annotation: Any) -> str:
    """A YAML-minded name for a field's type: ``float | null``, ``one of a, b``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # validators and markers ride along; the type is first
        return type_label(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_label(arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (list, tuple, set):
        (item, *_) = typing.get_args(annotation) or (Any,)
        return f"list of {type_label(item)}"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, ComponentConfig):
        kind = _component_kind(annotation)
        return f"[{kind}](#{kind}s)" if kind else annotation.__name__
    if annotation in _MODEL_ANCHORS:
        return f"[{annotation.__name__}](#{_MODEL_ANCHORS[annotation]})"
    if isinstance(annotation, type):
        return "mapping" if issubclass(annotation, BaseModel) else annotation.__name__
    return str(annotation).replace("typing.", "")


def _component_kind(config: type[ComponentConfig]) -> str | None:
    for base, kind in _COMPONENT_BASES.items():
        if issubclass(config, base):
            return kind
    return None


def value_label(value: Any) -> str:
    """A default as it is written in YAML: ``true``, ``null``, ``0.21``, a component name."""
    if isinstance(value, ComponentConfig):
        return f"`{value.name}`"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple)) and not value:
        return "`[]`"
    return f"`{value}`"


def default_label(field: FieldInfo) -> str:
    """The field's default, ``required`` when it has none."""
    if field.default_factory is not None:
        return value_label(field.default_factory())  # pact's factories take no argument
    if field.default is PydanticUndefined:
        return "required"
    return value_label(field.default)


def range_label(name: str, field: FieldInfo) -> str:
    """The numeric bounds of a field: ``0.0 ≤ cutoff ≤ 2.0``, ``dc > 0.0``; empty if none."""
    lower = _bound(field, _LOWER)
    upper = _bound(field, _UPPER)
    if lower and upper:
        return f"{lower[0]} {lower[1]} {name} {upper[1]} {upper[0]}"
    if lower:  # one-sided: read as `name > bound`, the symbol mirrored
        return f"{name} {lower[1].replace('<', '>').replace('≤', '≥')} {lower[0]}"
    if upper:
        return f"{name} {upper[1]} {upper[0]}"
    return ""


def _bound(field: FieldInfo, kinds) -> tuple[Any, str] | None:
    """The first bound of ``kinds`` in the field's metadata, as ``(value, symbol)``."""
    for item in field.metadata:
        for cls, attribute, symbol in kinds:
            if isinstance(item, cls):
                return getattr(item, attribute), symbol
    return None


def description(field: FieldInfo) -> str:
    """The field's docstring on one line, reST double backticks turned into markdown."""
    text = " ".join((field.description or "").split())
    return text.replace("``", "`")


def field_docs(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[FieldDoc]:
    """One :class:`FieldDoc` per field of ``model``, in declaration order."""
    return [
        FieldDoc(
            name=name,
            type=type_label(field.annotation),
            default=default_label(field),
            range=range_label(name, field),
            description=description(field),
        )
        for name, field in model.model_fields.items()
        if name not in skip
    ]


def _cell(text: str) -> str:
    """Escape the pipes that would split a table cell: those outside code spans (a code
    span keeps its pipes, e.g. ``||H[j]||``, and would show the backslash)."""
    parts = text.split("`")
    parts[::2] = [part.replace("|", "\\|") for part in parts[::2]]
    return "`".join(parts)


def fields_table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> str:
    """A markdown table of the fields of ``model`` (empty string if it has none)."""
    rows = field_docs(model, skip)
    if not rows:
        return ""
    lines = ["| field | type | default | range | description |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        cells = (f"`{row.name}`", row.type, row.default, row.range, row.description)
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def summary(text: str | None, code: str = "`") -> str:
    """First paragraph of a docstring (or comment), on one line; reST's double backticks
    become ``code`` (markdown's single backtick, or nothing for plain text)."""
    paragraph = (text or "").strip().split("\n\n")[0]
    return " ".join(paragraph.split()).replace("``", code)


def component_facts(cls: type[Component]) -> list[str]:
    """Class-level behaviour a config file cannot show: default keep ratio, retrieval."""
    facts = []
    if issubclass(cls, Scorer):
        fixed = cls.Config.fixed_keep_ratio
        if fixed is not None:
            facts.append(f"keep ratio fixed at `{fixed}`")
        else:
            facts.append(f"default keep ratio `{cls.Config.default_keep_ratio}`")
        if cls.needs_attention_scores:
            facts.append("builds attention scores (refused under flash attention)")
    if issubclass(cls, Clusterer):
        bounded = cls.Config.distance_bound is not ClustererConfig.distance_bound
        facts.append("distance-bounded: works with `retrieval`" if bounded else "no distance bound")
        if not cls.needs_features:
            facts.append("ignores the features")
    return facts


def component_section(kind: str, name: str, cls: type[Component]) -> str:
    """``### name``: summary, where it lives, class-level facts, and its settings."""
    config = cls.Config
    lines = [
        f"### `{name}` {{ #{kind}-{name} }}",
        "",
        summary(cls.__doc__),
        "",
        f"Class `{cls.__module__}.{cls.__qualname__}`; settings "
        f"`{config.__module__}.{config.__qualname__}`: {summary(config.__doc__)}",
    ]
    facts = component_facts(cls)
    if facts:
        lines += ["", "- " + "\n- ".join(facts)]
    table = fields_table(config, skip=("name",))
    lines += ["", table or f"No settings: write `{kind}: {name}`."]
    return "\n".join(lines)


def registry_section(kind: str, registry: Registry) -> str:
    """``## Scorers`` (etc.): one section per registered name, sorted."""
    heading = f"## {kind.capitalize()}s {{ #{kind}s }}"
    names = registry.names()
    index = ", ".join(f"[`{name}`](#{kind}-{name})" for name in names)
    sections = [component_section(kind, name, registry.get(name)) for name in names]
    return "\n\n".join([heading, f"Registered: {index}.", *sections])


def presets_section() -> str:
    """Every built-in preset's YAML file, comments included."""
    parts = [
        "## Presets { #presets }",
        "The files behind `pact.attach(model, NAME)` and `pact presets --show NAME`.",
    ]
    for name in list_presets():
        parts.append(f"### `{name}` {{ #preset-{name} }}\n\n```yaml\n{preset_text(name)}```")
    return "\n\n".join(parts)


def config_reference(registries: Mapping[str, Registry] | None = None) -> str:
    """The whole reference page: schedule, stage, every registered component, presets."""
    registries = REGISTRIES if registries is None else registries
    parts = [
        INTRO,
        "## PactConfig { #pactconfig }",
        summary(PactConfig.__doc__),
        fields_table(PactConfig),
        "## StageConfig { #stageconfig }",
        summary(StageConfig.__doc__),
        fields_table(StageConfig),
        *(registry_section(kind, registry) for kind, registry in registries.items()),
        presets_section(),
    ]
    return _tidy("\n\n".join(parts))


def _tidy(text: str) -> str:
    """At most one blank line in a row, one newline at the end."""
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def main() -> None:
    print(config_reference(), end="")


if __name__ == "__main__":
    main()
