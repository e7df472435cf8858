"""Configuration: validation with field paths, cross-field rules, presets, sources, overrides."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from pydantic import ValidationError

import pact
from pact import ConfigError, PactConfig, StageConfig


def stage(**fields) -> dict:
    return {"stages": [{"layer": 4, **fields}]}


# (config, pydantic loc, error type or None, substring of the message)
FIELD_ERRORS = [
    (stage(layer="x"), ("stages", 0, "layer"), "int_type", "valid integer"),
    (stage(layer=-1), ("stages", 0, "layer"), "greater_than_equal", "greater than or equal"),
    (stage(layer=2.5), ("stages", 0, "layer"), "int_type", "valid integer"),
    (
        stage(scorer="euti", keep_ratio=1.5),
        ("stages", 0, "keep_ratio"),
        "less_than_equal",
        "less than or equal to 1",
    ),
    (
        stage(scorer="euti", keep_ratio=-0.1),
        ("stages", 0, "keep_ratio"),
        "greater_than_equal",
        "greater than or equal to 0",
    ),
    (
        stage(clusterer={"name": "dbdpc", "cutoff": 3}),
        ("stages", 0, "clusterer", "cutoff"),
        "less_than_equal",
        "less than or equal to 2",
    ),
    (
        stage(clusterer={"name": "dbdpc", "dc": 0}),
        ("stages", 0, "clusterer", "dc"),
        "greater_than",
        "greater than 0",
    ),
    (
        stage(clusterer={"name": "dbdpc", "cutoff": "far"}),
        ("stages", 0, "clusterer", "cutoff"),
        "float_parsing",
        "valid number",
    ),
    (stage(retrieval="maybe"), ("stages", 0, "retrieval"), "bool_parsing", "valid boolean"),
    (stage(cluster_on="values"), ("stages", 0, "cluster_on"), "literal_error", "keys_rope"),
    (stage(position_mode="first"), ("stages", 0, "position_mode"), "literal_error", "renumber"),
    (
        stage(scorer={"name": "attention", "query_chunk": 0}),
        ("stages", 0, "scorer", "query_chunk"),
        "greater_than_equal",
        "greater than or equal to 1",
    ),
    (
        stage(merger={"name": "mean", "weighted": "heavy"}),
        ("stages", 0, "merger", "weighted"),
        "bool_parsing",
        "valid boolean",
    ),
    ({"stages": {"layer": 4}}, ("stages",), "list_type", "valid list"),
    ({"stages": [{}]}, ("stages", 0, "layer"), "missing", "Field required"),
    # unknown keys, at every level
    ({"stagez": []}, ("stagez",), "extra_forbidden", "Extra inputs"),
    (stage(cutof=0.2), ("stages", 0, "cutof"), "extra_forbidden", "Extra inputs"),
    (
        stage(clusterer={"name": "dbdpc", "cutof": 0.2}),
        ("stages", 0, "clusterer", "cutof"),
        "extra_forbidden",
        "Extra inputs",
    ),
    (
        stage(scorer={"name": "euti", "keep": 0.5}),
        ("stages", 0, "scorer", "keep"),
        "extra_forbidden",
        "Extra inputs",
    ),
    (
        stage(merger={"name": "mean", "weights": True}),
        ("stages", 0, "merger", "weights"),
        "extra_forbidden",
        "Extra inputs",
    ),
    # component names
    (
        stage(clusterer={"name": "dbdpcc"}),
        ("stages", 0, "clusterer"),
        "unknown_component",
        "known clusterers: agglomerative, dbdpc",
    ),
    (stage(scorer="eut"), ("stages", 0, "scorer"), "unknown_component", "known scorers:"),
    (stage(merger="avg"), ("stages", 0, "merger"), "unknown_component", "known mergers:"),
    (
        stage(clusterer={"cutoff": 0.2}),
        ("stages", 0, "clusterer"),
        "component",
        "mapping with a 'name' key",
    ),
    (stage(clusterer=3), ("stages", 0, "clusterer"), "component", "known clusterers:"),
    # rules inside one component
    (
        stage(clusterer={"name": "tome"}),
        ("stages", 0, "clusterer"),
        "value_error",
        "exactly one of r and merge_ratio",
    ),
    (
        stage(clusterer={"name": "tome", "r": 2, "merge_ratio": 0.1}),
        ("stages", 0, "clusterer"),
        "value_error",
        "exactly one of r and merge_ratio",
    ),
    (
        stage(clusterer={"name": "agglomerative"}),
        ("stages", 0, "clusterer"),
        "value_error",
        "exactly one of keep_ratio and distance_threshold",
    ),
    (
        stage(clusterer={"name": "agglomerative", "keep_ratio": 0.5, "distance_threshold": 0.2}),
        ("stages", 0, "clusterer"),
        "value_error",
        "exactly one of keep_ratio and distance_threshold",
    ),
    # rules across a stage's fields
    (stage(keep_ratio=0.5), ("stages", 0), "value_error", "needs a scorer"),
    (stage(scorer="euti", alpha=1.2), ("stages", 0), "value_error", "alpha"),
    (
        stage(retrieval=True, clusterer="dbdpc"),
        ("stages", 0),
        "value_error",
        "retrieval takes back pruned tokens and needs a scorer",
    ),
    (
        stage(retrieval=True, scorer="euti"),
        ("stages", 0),
        "value_error",
        "distance bound",
    ),
    (
        stage(retrieval=True, scorer="euti", clusterer={"name": "kmeans"}),
        ("stages", 0),
        "value_error",
        "'kmeans' has none",
    ),
    (
        stage(retrieval=True, scorer="euti", clusterer={"name": "dbscan"}),
        ("stages", 0),
        "value_error",
        "'dbscan' has none",
    ),
    (
        stage(scorer="withdraw", keep_ratio=0.5),
        ("stages", 0),
        "value_error",
        "keep_ratio must be 0.0 with scorer 'withdraw'",
    ),
    # across stages
    ({"stages": [{"layer": 4}, {"layer": 4}]}, (), "value_error", "strictly increasing"),
    ({"stages": [{"layer": 6}, {"layer": 2}]}, (), "value_error", "got [6, 2]"),
]


@pytest.mark.parametrize(("data", "loc", "kind", "message"), FIELD_ERRORS)
def test_model_validate_reports_the_field_path(data, loc, kind, message):
    with pytest.raises(ValidationError) as caught:
        PactConfig.model_validate(data)
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    assert errors[0]["loc"] == loc
    assert errors[0]["type"] == kind
    assert message in errors[0]["msg"]


@pytest.mark.parametrize(("data", "loc", "kind", "message"), FIELD_ERRORS)
def test_load_raises_config_error_naming_the_field_path(data, loc, kind, message):
    with pytest.raises(ConfigError) as caught:
        PactConfig.load(data)
    text = str(caught.value)
    path = ".".join(str(part) for part in loc) or "(top level)"
    assert "1 invalid setting(s)" in text
    assert f"  {path}: " in text
    assert message in text


def test_config_error_quotes_the_bad_value_and_the_source():
    with pytest.raises(ConfigError) as caught:
        PactConfig.load("pact", ["stages.0.clusterer.cutoff=3"])
    lines = str(caught.value).splitlines()
    assert lines[0] == "pact: 1 invalid setting(s)"
    assert lines[1].startswith("  stages.0.clusterer.cutoff: Input should be less than or equal")
    assert lines[1].endswith("(got 3)")


def test_every_bad_setting_is_reported_at_once():
    data = {"stages": [{"layer": -1, "clusterer": {"name": "dbdpc", "cutoff": 3}}, {"layer": "x"}]}
    with pytest.raises(ConfigError) as caught:
        PactConfig.load(data)
    text = str(caught.value)
    assert "3 invalid setting(s)" in text
    for path in ("stages.0.layer", "stages.0.clusterer.cutoff", "stages.1.layer"):
        assert f"  {path}: " in text


@pytest.mark.parametrize(
    ("data", "allowed"),
    [
        ({"stagez": []}, "stages"),
        (
            stage(cutof=1),
            "alpha, cluster_on, clusterer, keep_ratio, keep_tokens, layer, merger, place, "
            "position_mode, proportional_attention, recycling, retrieval, scorer, tower_layer",
        ),
        (stage(clusterer={"name": "dbdpc", "cutof": 0.2}), "cutoff, dc, name"),
        (stage(clusterer={"name": "tome", "r": 1, "rr": 2}), "merge_ratio, name, r"),
        (stage(scorer={"name": "random", "sed": 1}), "name, seed"),
        (stage(merger={"name": "mean", "weights": True}), "name, weighted"),
    ],
)
def test_unknown_keys_list_the_allowed_ones(data, allowed):
    with pytest.raises(ConfigError, match=f"allowed: {allowed}$"):
        PactConfig.load(data)


def test_unknown_key_in_a_component_given_by_a_preset_override_lists_allowed_keys():
    with pytest.raises(ConfigError) as caught:
        PactConfig.load("pact", ["stages.0.clusterer.radius=0.3"])
    assert "stages.0.clusterer.radius: Extra inputs are not permitted" in str(caught.value)
    assert "allowed: cutoff, dc, name" in str(caught.value)


def test_the_retrieval_hint_names_only_clusterers_that_allow_retrieval():
    with pytest.raises(ValidationError) as caught:
        StageConfig(layer=0, scorer="euti", retrieval=True)
    hint = re.search(r"\(e\.g\. ([^)]*)\)", caught.value.errors()[0]["msg"])
    assert hint is not None
    for name in hint.group(1).split(", "):
        assert StageConfig(layer=0, scorer="euti", retrieval=True, clusterer=name).retrieval


def test_cross_field_defaults_are_filled_in():
    pact_stage = StageConfig(layer=4, scorer="euti", clusterer="dbdpc", retrieval=True)
    assert pact_stage.keep_ratio == 0.55 and pact_stage.alpha == 1.5
    assert pact_stage.retrieval_radius == pytest.approx(1.5 * 0.21)
    assert StageConfig(layer=0, scorer="norm").keep_ratio == 0.5
    assert StageConfig(layer=0, scorer="withdraw").keep_ratio == 0.0
    assert StageConfig(layer=0).keep_ratio is None
    assert StageConfig(layer=0, keep_ratio=1.0).keep_ratio == 1.0  # no pruning: allowed
    assert StageConfig(layer=0).retrieval_radius is None


def test_shorthand_component_names_equal_the_mapping_form():
    short = PactConfig.load({"stages": [{"layer": 4, "clusterer": "dbdpc", "scorer": "euti"}]})
    long = PactConfig.load(
        {"stages": [{"layer": 4, "clusterer": {"name": "dbdpc"}, "scorer": {"name": "euti"}}]}
    )
    assert short == long
    assert short.stages[0].clusterer.cutoff == 0.21
    assert type(short.stages[0].clusterer).__name__ == "DbdpcConfig"


def test_configs_are_frozen():
    config = PactConfig.load("pact")
    with pytest.raises(ValidationError):
        config.stages[0].layer = 3
    with pytest.raises(ValidationError):
        config.stages[0].clusterer.cutoff = 0.5


# --- presets ---------------------------------------------------------------------------------


def test_list_presets_is_the_official_table():
    assert pact.list_presets() == [
        "agglomerative",
        "dart",
        "dbdpc",
        "dbscan",
        "divprune",
        "dpc",
        "euti",
        "fastv",
        "kmeans",
        "none",
        "pact",
        "pyramiddrop",
        "sparsevlm",
        "tome",
        "visionzip",
        "vtw",
    ]


@pytest.mark.parametrize("name", pact.list_presets())
def test_every_preset_round_trips_through_yaml_text_and_files(name, tmp_path):
    config = PactConfig.load(name)
    assert PactConfig.load(config.to_yaml()) == config
    assert pact.load_config(name) == config

    yaml_file = tmp_path / f"{name}.yaml"
    config.to_yaml(yaml_file)
    assert PactConfig.load(yaml_file) == config
    assert PactConfig.load(str(yaml_file)) == config

    json_file = tmp_path / f"{name}.json"
    json_file.write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
    assert PactConfig.load(json_file) == config
    assert PactConfig.load(json.dumps(config.to_dict())) == config  # one-line JSON text

    assert PactConfig.load(config) == config
    assert PactConfig.load(config.to_dict()) == config
    assert PactConfig.model_validate(yaml.safe_load(config.to_yaml())) == config


@pytest.mark.parametrize("name", pact.list_presets())
def test_to_yaml_writes_every_field_out(name):
    data = yaml.safe_load(PactConfig.load(name).to_yaml())
    for written in data["stages"]:
        assert set(written) == set(StageConfig.model_fields)
        for kind in ("clusterer", "merger"):
            component = written[kind]
            model = type(getattr(PactConfig.load(name).stages[0], kind))
            assert set(component) == set(model.model_fields)


def only_stage(name: str) -> StageConfig:
    config = PactConfig.load(name)
    assert len(config.stages) == 1
    return config.stages[0]


def test_preset_pact():
    s = only_stage("pact")
    assert (s.layer, s.scorer.name, s.keep_ratio) == (4, "euti", 0.55)
    assert (s.clusterer.name, s.clusterer.cutoff, s.clusterer.dc) == ("dbdpc", 0.21, 2.0)
    assert s.retrieval and s.alpha == 1.5
    assert s.merger.name == "mean" and s.merger.weighted
    assert s.proportional_attention and s.position_mode == "keep"
    assert s.cluster_on == "keys_rope"


def test_preset_dbdpc():
    s = only_stage("dbdpc")
    assert s.scorer is None and s.keep_ratio is None and not s.retrieval
    assert (s.clusterer.name, s.clusterer.cutoff) == ("dbdpc", 0.21)
    assert s.layer == 4


def test_preset_euti():
    s = only_stage("euti")
    assert (s.scorer.name, s.keep_ratio) == ("euti", 0.5)
    assert s.clusterer.name == "none" and not s.retrieval


def test_preset_fastv():
    s = only_stage("fastv")
    assert (s.scorer.name, s.scorer.query, s.keep_ratio) == ("attention", "last", 0.5)
    assert s.clusterer.name == "none"


def test_preset_pyramiddrop_halves_the_image_at_each_quarter():
    config = PactConfig.load("pyramiddrop")
    assert [s.layer for s in config.stages] == [7, 14, 21]  # quarters of 28 layers
    for s in config.stages:
        assert (s.scorer.name, s.scorer.query, s.keep_ratio) == ("attention", "last", 0.5)
        assert s.clusterer.name == "none"


def test_preset_dart_and_divprune():
    dart, divprune = only_stage("dart"), only_stage("divprune")
    assert (dart.layer, dart.scorer.name, dart.keep_ratio) == (2, "dart", 0.222)
    assert (dart.scorer.image_pivots, dart.scorer.text_pivots) == (4, 4)
    assert (divprune.layer, divprune.scorer.name, divprune.keep_ratio) == (0, "divprune", 0.098)


def test_preset_vtw():
    s = only_stage("vtw")
    assert (s.scorer.name, s.keep_ratio) == ("withdraw", 0.0)
    assert s.clusterer.name == "none"


def test_preset_tome_is_progressive_from_layer_zero():
    config = PactConfig.load("tome")
    assert [s.layer for s in config.stages] == list(range(8))
    for s in config.stages:
        assert s.scorer is None
        assert (s.clusterer.name, s.clusterer.merge_ratio, s.clusterer.r) == ("tome", 0.1, None)


def test_preset_kmeans():
    s = only_stage("kmeans")
    assert s.scorer is None
    assert (s.clusterer.name, s.clusterer.keep_ratio) == ("kmeans", 0.5)


def test_preset_dbscan():
    s = only_stage("dbscan")
    assert s.scorer is None
    assert (s.clusterer.name, s.clusterer.eps, s.clusterer.noise_as_clusters) == (
        "dbscan",
        0.1,
        True,
    )


def test_preset_dpc():
    s = only_stage("dpc")
    assert s.scorer is None and s.clusterer.name == "dpc"


def test_preset_agglomerative():
    s = only_stage("agglomerative")
    assert s.scorer is None
    assert (s.clusterer.name, s.clusterer.linkage) == ("agglomerative", "single")


def test_preset_none_has_no_stage():
    assert PactConfig.load("none").stages == []
    assert PactConfig.load() == PactConfig.load("none") == PactConfig()


# --- sources ---------------------------------------------------------------------------------


def test_loading_from_yaml_text_a_dict_and_a_file_agree(tmp_path):
    text = "stages:\n  - layer: 3\n    clusterer: {name: dbdpc, cutoff: 0.3}\n"
    from_text = PactConfig.load(text)
    from_dict = PactConfig.load(
        {"stages": [{"layer": 3, "clusterer": {"cutoff": 0.3, "name": "dbdpc"}}]}
    )
    path = tmp_path / "mine.yml"
    path.write_text(text, encoding="utf-8")
    assert from_text == from_dict == PactConfig.load(path)
    assert from_text.stages[0].clusterer.cutoff == 0.3
    assert (
        PactConfig.load("{stages: [{layer: 3, clusterer: {name: dbdpc, cutoff: 0.3}}]}")
        == from_text
    )


def test_a_file_without_a_config_suffix_is_read(tmp_path):
    path = tmp_path / "settings"
    path.write_text("stages: [{layer: 2, scorer: norm}]\n", encoding="utf-8")
    assert PactConfig.load(str(path)).stages[0].scorer.name == "norm"


@pytest.mark.parametrize("text", ["", "# nothing\n", "null\n"])
def test_an_empty_file_is_an_error_naming_it(tmp_path, text):
    """An empty file is more likely a mistake than a wish for no reduction: it is refused,
    and the message says how to ask for the unchanged model."""
    path = tmp_path / "empty.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"empty\.yaml is empty; write 'stages: \[\]'"):
        PactConfig.load(path)
    path.write_text("stages: []\n", encoding="utf-8")
    assert PactConfig.load(path) == PactConfig()


@pytest.mark.parametrize(
    ("stage", "field"),
    [
        ({"layer": True}, "stages.0.layer"),
        ({"layer": 4.0}, "stages.0.layer"),
        ({"layer": "4"}, "stages.0.layer"),
        ({"layer": 2, "clusterer": {"name": "kmeans", "iterations": 5.0}}, "iterations"),
        ({"layer": 2, "clusterer": {"name": "tome", "r": True}}, "stages.0.clusterer.r"),
        ({"layer": 2, "scorer": {"name": "random", "seed": 1.5}}, "stages.0.scorer.seed"),
        ({"layer": 2, "keep_tokens": 64.0}, "stages.0.keep_tokens"),
        ({"layer": 2, "scorer": {"name": "dart", "image_pivots": True}}, "image_pivots"),
        ({"layer": 2, "scorer": {"name": "dart", "text_pivots": 2.0}}, "text_pivots"),
    ],
)
def test_integer_settings_take_integers_only(stage, field):
    """YAML's ``true`` and ``4.0`` are not layer numbers or counts (pydantic would coerce)."""
    with pytest.raises(ConfigError, match=rf"{field}: Input should be a valid integer"):
        PactConfig.load({"stages": [stage]})


def test_loading_a_dict_does_not_touch_it():
    data = {"stages": [{"layer": 3, "clusterer": "dbdpc"}]}
    PactConfig.load(data, ["clusterer.cutoff=0.4"])
    assert data == {"stages": [{"layer": 3, "clusterer": "dbdpc"}]}


@pytest.mark.parametrize("source", ["pactt", "missing.yaml", "nowhere/config.json"])
def test_unknown_preset_or_missing_file_lists_the_presets(source):
    with pytest.raises(ConfigError) as caught:
        PactConfig.load(source)
    assert repr(source) in str(caught.value)
    assert "presets: " + ", ".join(pact.list_presets()) in str(caught.value)


def test_bad_sources_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        PactConfig.load("- a\n- b\n")
    with pytest.raises(ConfigError, match="not valid YAML or JSON"):
        PactConfig.load("stages: [\n")
    broken = tmp_path / "broken.json"
    broken.write_text('{"stages": [', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.json: not valid YAML or JSON"):
        PactConfig.load(broken)
    with pytest.raises(ConfigError, match="got int"):
        PactConfig.load(4)


def test_a_file_error_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("stages: [{layer: 1, clusterer: {name: dbdpc, cutoff: 9}}]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        PactConfig.load(path)
    assert str(caught.value).startswith(f"{path}: 1 invalid setting(s)")
    assert "stages.0.clusterer.cutoff" in str(caught.value)


# --- overrides -------------------------------------------------------------------------------


def test_override_one_stage_by_index():
    config = PactConfig.load("pact", ["stages.0.clusterer.cutoff=0.3"])
    assert config.stages[0].clusterer.cutoff == 0.3
    assert config.stages[0].retrieval_radius == pytest.approx(0.45)
    assert PactConfig.load("pact").with_overrides("stages.0.clusterer.cutoff=0.3") == config


def test_short_form_overrides_every_stage():
    config = PactConfig.load("tome", ["clusterer.merge_ratio=0.2"])
    assert [s.clusterer.merge_ratio for s in config.stages] == [0.2] * 8
    assert PactConfig.load("tome", ["stages.*.clusterer.merge_ratio=0.2"]) == config
    assert PactConfig.load("pact", ["clusterer.cutoff=0.3"]).stages[0].clusterer.cutoff == 0.3


def test_override_only_the_indexed_stage_of_many():
    config = PactConfig.load("tome", ["stages.3.clusterer.merge_ratio=0.25"])
    assert [s.clusterer.merge_ratio for s in config.stages] == [0.1] * 3 + [0.25] + [0.1] * 4


def test_star_override_sets_every_stage_and_is_revalidated():
    with pytest.raises(ConfigError, match="strictly increasing"):
        PactConfig.load("tome", ["stages.*.layer=7"])
    assert PactConfig.load("pact", ["stages.*.layer=7"]).stages[0].layer == 7
    assert PactConfig.load("vtw", ["layer=12"]).stages[0].layer == 12


def test_override_values_are_parsed_as_yaml():
    config = PactConfig.load(
        "pact", ["retrieval=false", "alpha=null", "keep_ratio=0.25", "position_mode=mean"]
    )
    s = config.stages[0]
    assert (s.retrieval, s.alpha, s.keep_ratio, s.position_mode) == (False, None, 0.25, "mean")
    whole = PactConfig.load("none", ["stages=[{layer: 2, scorer: norm}]"])
    assert whole.stages[0].scorer.name == "norm"


def test_changing_a_component_name_resets_its_settings():
    config = PactConfig.load("dbdpc", ["clusterer.name=kmeans"])
    assert config.stages[0].clusterer == PactConfig.load("kmeans").stages[0].clusterer
    same = PactConfig.load("pact", ["clusterer.name=dbdpc"])
    assert same == PactConfig.load("pact")  # the same name keeps the settings
    tome = PactConfig.load(
        "pact", ["retrieval=false", "alpha=null", "clusterer.name=tome", "clusterer.r=4"]
    )
    assert tome.stages[0].clusterer.r == 4 and tome.stages[0].clusterer.merge_ratio is None


def test_override_into_a_component_given_by_its_short_name():
    base = {"stages": [{"layer": 1, "clusterer": "dbdpc"}]}
    assert PactConfig.load(base, ["clusterer.cutoff=0.4"]).stages[0].clusterer.cutoff == 0.4
    assert PactConfig.load(base, ["clusterer=kmeans"]).stages[0].clusterer.name == "kmeans"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.5.layer=3", "'5' is not an index of a list of 1 item(s)"),
        ("stages.x.layer=3", "'x' is not an index"),
        ("stages.-1.layer=3", "'-1' is not an index"),
        ("stages.0.layer.deep=2", "cannot descend into 4 at 'deep'"),
        ("layer", "must look like 'path=value'"),
        ("=3", "must look like 'path=value'"),
    ],
)
def test_bad_override_paths_are_config_errors(override, message):
    with pytest.raises(ConfigError) as caught:
        PactConfig.load("pact", [override])
    assert message in str(caught.value)
    assert repr(override) in str(caught.value)


def test_overrides_validated_like_the_file():
    with pytest.raises(ConfigError, match=r"stages\.0\.clusterer\.cutoff: .*valid number"):
        PactConfig.load("pact", ["stages.0.clusterer.cutoff=abc"])
    with pytest.raises(ConfigError, match=r"(?m)^  nope: Extra inputs are not permitted"):
        PactConfig.load("pact", ["nope=1"])
    with pytest.raises(ConfigError, match="no stage to apply it to"):
        PactConfig.load("none", ["layer=3"])
