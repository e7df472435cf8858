"""The ``pact`` command line: presets, config, components."""

from __future__ import annotations

import pytest
import yaml

import pact
from pact import PactConfig
from pact.cli import main
from pact.registry import REGISTRIES


def test_presets_lists_all_eleven_with_their_summary(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    header, rule, *lines = out.splitlines()
    assert header.split() == ["preset", "description"] and set(rule) == {"-"}
    assert [line.split()[0] for line in lines] == pact.list_presets()
    assert len(lines) == 11
    by_name = {line.split()[0]: line for line in lines}
    assert "PACT (Dhouib et al., CVPR 2025)" in by_name["pact"]
    assert "#" not in out


@pytest.mark.parametrize("name", pact.list_presets())
def test_presets_show_prints_yaml_that_loads_equal_to_the_preset(name, capsys):
    assert main(["presets", "--show", name]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#")  # the preset's own file, comments included
    assert PactConfig.load(yaml.safe_load(out) or {}) == PactConfig.load(name)


def test_presets_show_unknown_name_fails_with_the_list(capsys):
    assert main(["presets", "--show", "pactt"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown preset 'pactt'" in captured.err
    assert ", ".join(pact.list_presets()) in captured.err


def test_config_prints_the_full_validated_config(capsys):
    assert main(["config", "pact", "--set", "clusterer.cutoff=0.3"]) == 0
    out = capsys.readouterr().out
    data = yaml.safe_load(out)
    assert data["stages"][0]["clusterer"] == {"name": "dbdpc", "cutoff": 0.3, "dc": 2.0}
    assert PactConfig.load(out) == PactConfig.load("pact", ["clusterer.cutoff=0.3"])


def test_config_takes_several_overrides_and_a_file(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("stages: [{layer: 2, scorer: norm}]\n", encoding="utf-8")
    argv = ["config", str(path), "--set", "keep_ratio=0.25", "--set", "stages.0.layer=5"]
    assert main(argv) == 0
    config = PactConfig.load(capsys.readouterr().out)
    assert (config.stages[0].layer, config.stages[0].keep_ratio) == (5, 0.25)
    assert config.stages[0].scorer.name == "norm"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["config", "pact", "--set", "stages.0.clusterer.cutoff=3"], "stages.0.clusterer.cutoff"),
        (["config", "pact", "--set", "clusterer.cutof=0.3"], "stages.0.clusterer.cutof"),
        (["config", "pact", "--set", "stages.3.layer=1"], "'3' is not an index"),
        (["config", "pact", "--set", "layer"], "must look like 'path=value'"),
        (["config", "pactt"], "presets: agglomerative"),
    ],
)
def test_config_errors_exit_2_naming_the_problem(argv, needle, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("pact config: ")
    assert needle in captured.err


def test_components_lists_every_registered_name(capsys):
    assert main(["components"]) == 0
    header, rule, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["kind", "name", "description"] and set(rule) == {"-"}
    rows = [line.split(maxsplit=2) for line in lines]
    listed = [(row[0], row[1]) for row in rows]
    expected = [(kind, name) for kind, registry in REGISTRIES.items() for name in registry.names()]
    assert listed == expected
    assert {name for kind, name in listed if kind == "scorer"} == set(pact.list_scorers())
    assert ("clusterer", "dbdpc") in listed and ("merger", "mean") in listed
    assert all(len(row) == 3 for row in rows)  # every built-in has a one-line summary


def test_missing_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
