"""The generated configuration reference covers the live registries, plugins included."""

from __future__ import annotations

import re
from typing import Literal

import pytest
import torch
from pydantic import Field

import pact
from pact import Clusterer, ClustererConfig, Clustering
from pact.reference import config_reference, fields_table, type_label


def rows(page: str) -> dict[str, str]:
    """Every table row of the page keyed by its first cell (later rows win)."""
    found = {}
    for line in page.splitlines():
        match = re.match(r"\| `([^`]+)` \|", line)
        if match:
            found[match.group(1)] = line
    return found


def section(page: str, anchor: str) -> str:
    """The text from the heading with ``{ #anchor }`` to the next heading with an anchor
    (every heading of the page but the title has one; YAML comments start with # too)."""
    start = page.index(f"{{ #{anchor} }}")
    following = re.search(r"^#+ .*\{ #[^}]+ \}$", page[start:], flags=re.MULTILINE)
    return page[start : start + following.start()] if following else page[start:]


@pytest.fixture
def plugin():
    """A clusterer registered only for the test, with every kind of field the page renders."""

    @pact.register_clusterer("reference_probe")
    class Probe(Clusterer):
        """A probe for the reference page."""

        class Config(ClustererConfig):
            """Settings of the probe."""

            radius: float = Field(0.5, gt=0.0, lt=1.0)
            """Radius of the
            probe, written over two lines."""
            mode: Literal["fast", "exact"] = "fast"
            """How hard to try."""
            budget: int | None = Field(None, ge=1)
            """Tokens to keep; ``||x||`` stays in code and a | b is escaped."""

            def distance_bound(self) -> float:
                return self.radius

        def cluster(self, features, sizes):
            n = features.shape[0]
            return Clustering(labels=torch.arange(n), centers=torch.arange(n))

    yield Probe
    pact.CLUSTERERS.unregister("reference_probe")


def test_every_registered_component_has_a_section() -> None:
    page = config_reference()
    for kind, registry in pact.REGISTRIES.items():
        assert f"{{ #{kind}s }}" in page
        for name in registry.names():
            text = section(page, f"{kind}-{name}")
            for field in registry.get(name).Config.model_fields:
                if field != "name":
                    assert f"| `{field}` |" in text, (kind, name, field)


def test_stage_and_schedule_fields_are_listed() -> None:
    page = config_reference()
    stage = section(page, "stageconfig")
    for field in pact.StageConfig.model_fields:
        assert f"| `{field}` |" in stage
    assert "| `stages` | list of [StageConfig](#stageconfig) | `[]` |" in page


def test_a_field_row_has_type_default_range_and_docstring() -> None:
    cutoff = rows(section(config_reference(), "clusterer-dbdpc"))["cutoff"]
    assert cutoff.startswith("| `cutoff` | float | `0.21` | 0.0 ≤ cutoff ≤ 2.0 | Cosine distance")
    layer = rows(section(config_reference(), "stageconfig"))["layer"]
    assert "| int | required | layer ≥ 0 |" in layer


def test_component_fields_of_a_stage_link_to_their_kind() -> None:
    stage = rows(section(config_reference(), "stageconfig"))
    assert "[scorer](#scorers) \\| null | `null`" in stage["scorer"]
    assert "[clusterer](#clusterers) | `none`" in stage["clusterer"]
    assert "[merger](#mergers) | `mean`" in stage["merger"]


def test_class_level_facts_are_shown() -> None:
    page = config_reference()
    assert "default keep ratio `0.55`" in section(page, "scorer-euti")
    assert "keep ratio fixed at `0.0`" in section(page, "scorer-withdraw")
    assert "works with `retrieval`" in section(page, "clusterer-dbdpc")
    assert "No settings: write `merger: center`." in section(page, "merger-center")


def test_a_plugin_appears_while_registered(plugin) -> None:
    page = config_reference()
    assert "[`reference_probe`](#clusterer-reference_probe)" in page
    probe = section(page, "clusterer-reference_probe")
    assert "A probe for the reference page." in probe
    assert "works with `retrieval`" in probe  # it overrides distance_bound
    table = rows(probe)
    radius = "| float | `0.5` | 0.0 < radius < 1.0 | Radius of the probe, written over two"
    assert radius in table["radius"]
    assert "| one of `fast`, `exact` | `fast` |" in table["mode"]
    assert "| int \\| null | `null` | budget ≥ 1 |" in table["budget"]
    assert "`||x||` stays in code and a \\| b is escaped" in table["budget"]
    pact.CLUSTERERS.unregister("reference_probe")
    assert "reference_probe" not in config_reference()


def test_every_preset_is_shown_as_its_file() -> None:
    page = config_reference()
    for name in pact.list_presets():
        assert f"{{ #preset-{name} }}" in page
    assert "scorer: {name: euti}" in section(page, "preset-pact")


def test_type_labels() -> None:
    assert type_label(int | None) == "int | null"
    assert type_label(Literal["a", "b"]) == "one of `a`, `b`"
    assert type_label(list[pact.StageConfig]) == "list of [StageConfig](#stageconfig)"
    assert type_label(pact.ScorerConfig) == "[scorer](#scorers)"


def test_a_model_without_fields_gives_no_table() -> None:
    assert fields_table(pact.ComponentConfig, skip=("name",)) == ""
