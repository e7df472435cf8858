"""Registries: the generic Registry, decorator plugins, and entry-point plugins on disk."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from helpers_pipeline import DIM, make_row, single
from pydantic import Field, ValidationError

import pact
from pact import (
    Clusterer,
    ClustererConfig,
    Clustering,
    ConfigError,
    Merger,
    MergerConfig,
    PactConfig,
    Pipeline,
    Registry,
    Scorer,
    ScorerConfig,
    StageConfig,
    UnknownComponentError,
)
from pact.mergers.folding import fold_row
from pact.registry import CLUSTERERS, MERGERS, REGISTRIES, SCORERS

# --- the generic Registry --------------------------------------------------------------------


@pytest.fixture
def widgets() -> Registry:
    """A fresh registry of scorers whose entry-point group nothing advertises."""
    return Registry("widget", Scorer, "pact.tests.no_such_group")


def make_scorer(doc: str = "A scorer.") -> type[Scorer]:
    class Made(Scorer):
        __doc__ = doc

        def score(self, inputs):
            return inputs.hidden.float().norm(dim=-1)

    return Made


def test_decorator_registers_and_returns_the_class(widgets):
    decorated = widgets.register("beta")(make_scorer())
    plain = widgets.register("alpha", make_scorer())
    assert widgets.get("beta") is decorated
    assert widgets.get("alpha") is plain
    assert decorated.registered_name == "beta"
    assert widgets.names() == ["alpha", "beta"]
    assert "alpha" in widgets and "gamma" not in widgets and 3 not in widgets


def test_a_taken_name_is_refused_unless_override(widgets):
    first, second = make_scorer(), make_scorer()
    widgets.register("same", first)
    with pytest.raises(ValueError, match=r"'same' is already registered.*override=True"):
        widgets.register("same", second)
    assert widgets.get("same") is first
    widgets.register("same", first)  # the same class again is harmless
    widgets.register("same", second, override=True)
    assert widgets.get("same") is second


def test_unknown_names_list_the_known_ones(widgets):
    widgets.register("zeta", make_scorer())
    widgets.register("eta", make_scorer())
    with pytest.raises(UnknownComponentError) as caught:
        widgets.get("theta")
    assert str(caught.value) == "unknown widget 'theta'; known widgets: eta, zeta"
    assert isinstance(caught.value, KeyError)


def test_only_subclasses_of_the_base_with_a_matching_config_are_accepted(widgets):
    class NotAScorer(Clusterer):
        def cluster(self, features, sizes):
            raise AssertionError

    with pytest.raises(TypeError, match="must be a subclass of Scorer"):
        widgets.register("wrong", NotAScorer)
    with pytest.raises(TypeError, match="must be a subclass of Scorer"):
        widgets.register("wrong", object)

    class WrongConfig(Scorer):
        Config = ClustererConfig

        def score(self, inputs):
            raise AssertionError

    with pytest.raises(TypeError, match="Config must subclass ScorerConfig"):
        widgets.register("wrong", WrongConfig)
    assert widgets.names() == []


@pytest.mark.parametrize("name", ["has space", "dotted.name", "", "1st", None])
def test_names_must_be_identifiers(widgets, name):
    with pytest.raises(ValueError, match="identifier"):
        widgets.register(name, make_scorer())


def test_unregister_forgets_a_name(widgets):
    widgets.register("gone", make_scorer())
    widgets.unregister("gone")
    widgets.unregister("never-there")  # no error
    assert widgets.names() == []


def test_built_in_listings_are_sorted_and_complete():
    assert pact.list_scorers() == sorted(pact.list_scorers())
    assert pact.list_clusterers() == sorted(pact.list_clusterers())
    assert pact.list_mergers() == sorted(pact.list_mergers())
    assert {"attention", "euti", "norm", "random", "withdraw"} <= set(pact.list_scorers())
    assert {"agglomerative", "dbdpc", "dbscan", "dpc", "kmeans", "none", "tome"} <= set(
        pact.list_clusterers()
    )
    assert {"center", "mean"} <= set(pact.list_mergers())
    assert REGISTRIES == {"scorer": SCORERS, "clusterer": CLUSTERERS, "merger": MERGERS}
    for registry in REGISTRIES.values():
        for name in registry.names():
            assert registry.get(name).registered_name == name


def test_component_built_from_a_dict_fills_in_its_name():
    scorer = SCORERS.get("random")({"seed": 3})
    assert scorer.config == SCORERS.get("random").Config(name="random", seed=3)
    with pytest.raises(TypeError, match="takes a"):
        SCORERS.get("random")(SCORERS.get("norm").Config(name="norm"))


# --- decorator plugins -----------------------------------------------------------------------


@pytest.fixture
def plugins():
    """A scorer, a clusterer and a merger registered by decorator for one test."""

    class CoordinateConfig(ScorerConfig):
        """Score by one coordinate of the hidden state."""

        feature: int = Field(0, ge=0, lt=DIM)

    @pact.register_scorer("test_coordinate")
    class Coordinate(Scorer):
        Config = CoordinateConfig

        def score(self, inputs):
            return inputs.hidden[..., self.config.feature].float()

    class RunsConfig(ClustererConfig):
        run: int = Field(2, ge=1)

    @pact.register_clusterer("test_runs")
    class Runs(Clusterer):
        """Consecutive runs of ``run`` tokens; each run's last token is its center."""

        Config = RunsConfig
        needs_features = False

        def cluster(self, features, sizes):
            n = features.shape[0]
            labels = torch.arange(n) // self.config.run
            centers = torch.clamp(torch.arange(1, labels.max() + 2) * self.config.run, max=n) - 1
            return Clustering(labels=labels, centers=centers if n else labels)

    class ScaledMaxConfig(MergerConfig):
        scale: float = Field(1.0, gt=0.0)

    @pact.register_merger("test_scaled_max")
    class ScaledMax(Merger):
        """Elementwise max of the members, times ``scale``."""

        Config = ScaledMaxConfig

        def merge(self, row):
            return fold_row(row, self.cluster_hidden)

        def cluster_hidden(self, row, members, cluster_size):
            out = torch.full((cluster_size.numel(), row.hidden.shape[1]), -float("inf"))
            index = members.clusters[:, None].expand(-1, row.hidden.shape[1])
            out = out.scatter_reduce(0, index, row.hidden[members.slots].float(), "amax")
            return out * self.config.scale

    try:
        yield Coordinate, Runs, ScaledMax
    finally:
        SCORERS.unregister("test_coordinate")
        CLUSTERERS.unregister("test_runs")
        MERGERS.unregister("test_scaled_max")


def expected_plugin_row(hidden, visual, feature, keep, run, scale):
    """The plugins' result computed directly: slots, hidden and sizes of one row."""
    visual_slots = torch.nonzero(visual).flatten().tolist()
    ranked = sorted(visual_slots, key=lambda slot: (-float(hidden[slot, feature]), slot))
    kept = sorted(ranked[:keep])
    out = {slot: (hidden[slot], 1.0) for slot in range(len(hidden)) if not visual[slot]}
    for start in range(0, len(kept), run):
        group = kept[start : start + run]
        out[group[-1]] = (hidden[group].max(dim=0).values * scale, float(len(group)))
    slots = sorted(out)
    return slots, torch.stack([out[s][0] for s in slots]), torch.tensor([out[s][1] for s in slots])


def test_decorated_plugins_run_through_the_pipeline(plugins):
    assert "test_coordinate" in pact.list_scorers()
    assert "test_runs" in pact.list_clusterers()
    assert "test_scaled_max" in pact.list_mergers()
    stage = StageConfig(
        layer=1,
        scorer={"name": "test_coordinate", "feature": 2},
        keep_ratio=0.7,
        clusterer={"name": "test_runs", "run": 3},
        merger={"name": "test_scaled_max", "scale": 0.5},
    )
    assert type(stage.scorer) is plugins[0].Config
    row = make_row(3, 10, 2, seed=21, noise=1.0)
    reduction = Pipeline(stage)(single(row))
    slots, hidden, sizes = expected_plugin_row(row.hidden, row.visual, 2, 7, 3, 0.5)
    assert reduction.kept_slots[0].tolist() == slots
    torch.testing.assert_close(reduction.hidden[0], hidden)
    assert torch.equal(reduction.sizes[0], sizes)
    assert reduction.stats.after_prune == [7] and reduction.stats.after_merge == [3]


def test_plugin_configs_are_validated_with_field_paths(plugins):
    with pytest.raises(ValidationError) as caught:
        StageConfig(layer=1, scorer={"name": "test_coordinate", "feature": DIM})
    assert caught.value.errors()[0]["loc"] == ("scorer", "feature")
    bad = {
        "stages": [
            {
                "layer": 1,
                "clusterer": {"name": "test_runs", "run": 0},
                "merger": {"name": "test_scaled_max", "scale": -1, "shift": 2},
            }
        ]
    }
    with pytest.raises(ConfigError) as caught:
        PactConfig.load(bad)
    text = str(caught.value)
    assert "3 invalid setting(s)" in text
    assert "stages.0.clusterer.run: Input should be greater than or equal to 1" in text
    assert "stages.0.merger.scale: Input should be greater than 0" in text
    assert (
        "stages.0.merger.shift: Extra inputs are not permitted (got 2); allowed: name, scale"
        in text
    )


def test_plugin_names_appear_in_unknown_name_errors_and_leave_cleanly(plugins):
    with pytest.raises(ConfigError, match=r"known clusterers: .*test_runs"):
        PactConfig.load({"stages": [{"layer": 0, "clusterer": "test_run"}]})


def test_plugins_are_gone_after_their_fixture():
    for registry, name in [
        (SCORERS, "test_coordinate"),
        (CLUSTERERS, "test_runs"),
        (MERGERS, "test_scaled_max"),
    ]:
        assert name not in registry


def test_a_plugin_may_replace_a_built_in_only_with_override():
    original = MERGERS.get("center")

    class Loud(Merger):
        Config = original.Config

        def merge(self, row):
            raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        pact.register_merger("center")(Loud)
    try:
        pact.register_merger("center", override=True)(Loud)
        assert MERGERS.get("center") is Loud
    finally:
        MERGERS.register("center", original, override=True)
    assert MERGERS.get("center") is original


# --- entry-point plugins ---------------------------------------------------------------------

PLUGIN_MODULE = '''
"""A pact plugin shipped as a separate distribution."""

import torch
from pydantic import Field

import pact
from pact import Clusterer, ClustererConfig, Clustering, Merger, MergerConfig, Scorer
from pact import ScorerConfig
from pact.mergers.folding import fold_row


class FirstConfig(ScorerConfig):
    """Prefer early tokens."""


class First(Scorer):
    """Importance decreasing with the position: keeps the earliest visual tokens."""

    Config = FirstConfig

    def score(self, inputs):
        tokens = inputs.hidden.shape[1]
        return -torch.arange(tokens, dtype=torch.float32).expand(inputs.hidden.shape[:2])


class LumpConfig(ClustererConfig):
    """One cluster of everything."""

    center: int = Field(0, ge=0)


@pact.register_clusterer("ep_lump")  # registers itself too: loading must not clash
class Lump(Clusterer):
    """All tokens in one cluster, centered at token ``center`` (clamped)."""

    Config = LumpConfig
    needs_features = False

    def cluster(self, features, sizes):
        n = features.shape[0]
        if n == 0:
            nothing = torch.zeros(0, dtype=torch.long)
            return Clustering(labels=nothing, centers=nothing)
        center = torch.tensor([min(self.config.center, n - 1)])
        return Clustering(labels=torch.zeros(n, dtype=torch.long), centers=center)


class SumConfig(MergerConfig):
    """Sum instead of mean."""


class Sum(Merger):
    """Cluster token = the sum of its members."""

    Config = SumConfig

    def merge(self, row):
        def total(row, members, cluster_size):
            out = torch.zeros(cluster_size.numel(), row.hidden.shape[1])
            return out.index_add_(0, members.clusters, row.hidden[members.slots].float())

        return fold_row(row, total)
'''

ENTRY_POINTS = """\
[pact.scorers]
ep_first = pact_ep_plugin:First

[pact.clusterers]
ep_lump = pact_ep_plugin:Lump

[pact.mergers]
ep_sum = pact_ep_plugin:Sum
"""

EP_NAMES = {"scorer": "ep_first", "clusterer": "ep_lump", "merger": "ep_sum"}


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution 'pact-ep-plugin' on sys.path, loaded into the registries, then removed."""
    (tmp_path / "pact_ep_plugin.py").write_text(textwrap.dedent(PLUGIN_MODULE), encoding="utf-8")
    info = tmp_path / "pact_ep_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: pact-ep-plugin\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(ENTRY_POINTS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        for registry in REGISTRIES.values():
            registry.load_entry_points(force=True)
        yield tmp_path
    finally:
        for kind, name in EP_NAMES.items():
            REGISTRIES[kind].unregister(name)
        sys.modules.pop("pact_ep_plugin", None)


def test_entry_point_plugins_are_listed_and_resolved(installed_plugin):
    assert "ep_first" in pact.list_scorers()
    assert "ep_lump" in pact.list_clusterers()
    assert "ep_sum" in pact.list_mergers()
    module = sys.modules["pact_ep_plugin"]
    assert SCORERS.get("ep_first") is module.First
    assert CLUSTERERS.get("ep_lump") is module.Lump
    assert MERGERS.get("ep_sum") is module.Sum


def test_entry_point_plugins_run_from_a_yaml_config(installed_plugin):
    text = textwrap.dedent(
        """\
        stages:
          - layer: 2
            scorer: ep_first
            keep_ratio: 0.5
            clusterer: {name: ep_lump, center: 1}
            merger: ep_sum
        """
    )
    path = installed_plugin / "plugin.yaml"
    path.write_text(text, encoding="utf-8")
    config = PactConfig.load(path)
    assert config == PactConfig.load(config.to_yaml())
    row = make_row(2, 8, 3, seed=5)
    reduction = pact.reduce(single(row), config)
    # Kept: the first 4 visual tokens (slots 2..5), one cluster centered at the 2nd (slot 3).
    assert reduction.kept_slots[0].tolist() == [0, 1, 3, 10, 11, 12]
    torch.testing.assert_close(reduction.hidden[0, 2], row.hidden[2:6].sum(dim=0))
    assert reduction.sizes[0].tolist() == [1, 1, 4, 1, 1, 1]
    with pytest.raises(ConfigError, match=r"stages\.0\.clusterer\.center"):
        PactConfig.load(text.replace("center: 1", "center: -1"))


def test_a_fresh_registry_discovers_entry_points_on_first_lookup(installed_plugin):
    fresh = Registry("scorer", Scorer, "pact.scorers")
    assert fresh.get("ep_first") is sys.modules["pact_ep_plugin"].First
    assert fresh.names() == ["ep_first"]  # built-ins register by decorator, not entry point


def test_entry_point_plugins_are_gone_after_their_fixture():
    for kind, name in EP_NAMES.items():
        assert name not in REGISTRIES[kind]
    assert "pact_ep_plugin" not in sys.modules
