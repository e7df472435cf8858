"""The ``pact`` command line: presets, config, components; help texts; light imports."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pact
from pact import PactConfig
from pact.cli import build_parser, main
from pact.registry import REGISTRIES

ROOT = Path(__file__).resolve().parents[1]


def test_presets_lists_every_preset_with_its_summary(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    header, rule, *lines = out.splitlines()
    assert header.split() == ["preset", "description"] and set(rule) == {"-"}
    assert [line.split()[0] for line in lines] == pact.list_presets()
    assert len(lines) == 16
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


LIGHT_COMMANDS = [
    ["--help"],
    ["presets"],
    ["presets", "--show", "pact"],
    ["config", "pact", "--set", "clusterer.cutoff=0.3"],
    ["components"],
]


@pytest.mark.parametrize("argv", LIGHT_COMMANDS, ids=" ".join)
def test_light_commands_import_neither_torch_nor_transformers(argv):
    """`pact --help`, `presets`, `config`, `components` answer at once: a fresh interpreter
    runs them without importing torch or transformers."""
    script = (
        "import sys\n"
        "from pact.cli import main\n"
        "try:\n"
        f"    code = main({argv!r})\n"
        "except SystemExit as stop:\n"
        "    code = stop.code\n"
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules))\n"
        "print('RESULT', code, heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "RESULT 0 []", result.stdout[-2000:]


def _parsers(parser: argparse.ArgumentParser):
    """``parser`` and every subcommand's parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_command_and_option_has_help_that_states_its_default():
    checked = 0
    for parser in _parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(choice.help for choice in action._choices_actions), parser.prog
                continue
            if not action.option_strings or action.default is argparse.SUPPRESS:
                continue
            assert action.help, (parser.prog, action.option_strings)
            if action.default is None or action.default is False:
                # No value to show: the help says what happens without the option.
                assert action.required or "default" in action.help, (
                    parser.prog, action.option_strings, action.help
                )
                continue
            shown = formatter._expand_help(action)
            default = action.default
            listed = ", ".join(map(str, default)) if isinstance(default, list) else None
            expected = str(default) if listed is None else listed or "none"
            assert expected in shown, (parser.prog, action.option_strings, shown)
            checked += 1
    assert checked > 40  # every command's options were reached


@pytest.mark.parametrize("command", [["config", "pact"], ["run"], ["viz"]])
@pytest.mark.parametrize(
    ("item", "field"),
    [("clusterer.cutoff=abc", "stages.0.clusterer.cutoff"), ("nosuchfield=1", "nosuchfield")],
)
def test_a_bad_set_value_is_named_before_any_model_work(command, item, field, capsys,
                                                        monkeypatch):  # fmt: skip
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the config was checked")

    monkeypatch.setattr("pact.models.tiny.build", refuse)
    monkeypatch.setattr("pact.models.shapes.model.load", refuse)
    assert main([*command, "--set", "keep_ratio=0.3", "--set", item]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    first = captured.err.splitlines()[0]
    assert first.startswith(f"pact {command[0]}: --set: override {item!r}: ")
    assert "keep_ratio=0.3" not in first  # the valid override is not blamed
    assert f"  {field}: " in captured.err
