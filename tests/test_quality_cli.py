"""`pact bench quality`, and `pact run` / `pact viz` on a trained shapes model: outputs
checked by recomputation (Wilson intervals by scipy, answers by the model itself)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy.stats import binomtest

from pact.bench.quality.report import comparisons, overlap, relative_interval
from pact.cli import main
from pact.models.shapes.model import load
from pact.models.shapes.questions import VOCAB
from pact.models.shapes.score import answer_ids, examples, predictions, wilson_interval

pytestmark = pytest.mark.usefixtures("single_thread")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_quality_table_json_and_plot(trained_shapes, tmp_path, capsys):
    out, _ = trained_shapes
    report_path, plot_path = tmp_path / "q.json", tmp_path / "q.png"
    argv = ["bench", "quality", "--model", str(out), "--methods", "euti,random,vtw",
            "--ratios", "0.5", "--examples", "16", "--calibration", "8",
            "--json", str(report_path), "--plot", str(plot_path), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert plot_path.read_bytes().startswith(PNG_MAGIC)
    right = predictions(load(out), examples("test", 16))
    unreduced = sum(right) / 16
    assert report["unreduced_accuracy"] == round(unreduced, 4)
    rows = {row["method"]: row for row in report["rows"]}
    assert set(rows) == {"euti", "random", "vtw"}
    for method in ("euti", "random"):  # exact knobs: floor(0.5 * 144) tokens stay
        assert rows[method]["reduction_ratio"] == 0.5
        assert rows[method]["overrides"][-1] == "keep_ratio=0.5"
    assert rows["vtw"]["value"] == 3 and rows["vtw"]["layer_averaged_ratio"] == 0.5
    for row in rows.values():
        expected = round(row["accuracy"] / unreduced, 4) if unreduced else None
        assert row["relative_accuracy"] == expected
        assert re.search(rf"^{row['method']}\s+\S", printed, flags=re.MULTILINE)
        wilson = binomtest(round(row["accuracy"] * 16), 16).proportion_ci(method="wilson")
        assert row["accuracy_interval"] == pytest.approx([wilson.low, wilson.high], abs=1e-4)
    assert f"unreduced accuracy {report['unreduced_accuracy']:.4f}" in printed
    assert bool(report["comparisons"]) == (unreduced > 0)  # no ratio to the unreduced's 0
    assert all(line in printed for line in report["comparisons"])


def test_set_applies_to_every_method_after_its_own_settings(trained_shapes, tmp_path):
    """``euti`` with ``--set scorer.name=random`` is the ``random`` method (EUTI's slot with
    the random scorer): the same rows, computed independently."""
    out, _ = trained_shapes
    common = ["bench", "quality", "--model", str(out), "--ratios", "0.5", "--examples", "16",
              "--calibration", "8", "--quiet"]  # fmt: skip
    reports = []
    for extra in (["--methods", "euti", "--set", "scorer.name=random"], ["--methods", "random"]):
        path = tmp_path / f"{len(reports)}.json"
        assert main([*common, *extra, "--json", str(path)]) == 0
        reports.append(json.loads(path.read_text()))
    with_set, random_method = (report["rows"][0] for report in reports)
    assert with_set["overrides"][-1] == "scorer.name=random"
    assert reports[0]["overrides"] == ["scorer.name=random"] and reports[1]["overrides"] == []
    for key in ("accuracy", "relative_accuracy", "reduction_ratio"):
        assert with_set[key] == random_method[key]


@pytest.mark.parametrize(("correct", "total"), [(0, 10), (3, 10), (10, 10), (517, 1000)])
def test_wilson_interval_matches_scipy(correct, total):
    expected = binomtest(correct, total).proportion_ci(method="wilson")
    assert wilson_interval(correct, total) == pytest.approx((expected.low, expected.high))


def test_relative_interval_holds_the_ratio_and_collapses_when_answers_are_equal():
    rng = np.random.default_rng(0)
    unreduced = (rng.random(400) < 0.9).astype(float)
    reduced = unreduced * (rng.random(400) < 0.8)
    low, high = relative_interval(reduced, unreduced)
    assert low < reduced.mean() / unreduced.mean() < high
    assert relative_interval(unreduced, unreduced) == (1.0, 1.0)


@pytest.mark.parametrize(("keep", "seed"), [(0.95, 1), (0.8, 2), (0.5, 3)])
def test_relative_interval_agrees_with_the_delta_method(keep, seed):
    """At 1000 questions the bootstrap's interval of a ratio of paired means is close to the
    delta method's: R +- 1.96 * sd(a - R b) / (mean(b) sqrt(n))."""
    rng = np.random.default_rng(seed)
    unreduced = (rng.random(1000) < 0.9).astype(float)
    reduced = np.where(rng.random(1000) < keep, unreduced, rng.random(1000) < 0.4).astype(float)
    ratio = reduced.mean() / unreduced.mean()
    spread = np.std(reduced - ratio * unreduced, ddof=1) / (unreduced.mean() * np.sqrt(1000))
    low, high = relative_interval(reduced, unreduced)
    assert low == pytest.approx(ratio - 1.96 * spread, abs=0.006)
    assert high == pytest.approx(ratio + 1.96 * spread, abs=0.006)


def test_comparisons_name_overlapping_intervals_and_pact_against_random():
    cells = [("pact", 0.95, [0.9, 1.0]), ("euti", 0.92, [0.88, 0.96]), ("random", 0.5, [0.4, 0.6])]
    rows = [{"method": m, "target": 0.9, "relative_accuracy": a, "relative_interval": i}
            for m, a, i in cells]  # fmt: skip
    rows.append(
        {
            "method": "dbscan",
            "target": 0.9,
            "relative_accuracy": 0.99,
            "relative_interval": [0.98, 1.0],
            "reduction_ratio": 0.8,
        }
    )
    for row in rows[:3]:
        row["reduction_ratio"] = 0.9
    (line,) = comparisons({"rows": rows})
    assert "highest pact 0.950" in line and "apart from it: euti" in line
    assert "random: apart" in line and "left out: dbscan (0.80)" in line
    assert overlap([0, 1], [1, 2]) and not overlap([0, 1], [1.01, 2])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--methods", "pact,blorp"], "--methods: unknown ['blorp']"),
        (["--ratios", "0.5,1.5"], "--ratios"),
        (["--layer", "6"], "--layer"),
        (["--examples", "0"], "--examples"),
        (["--model", "/no/such/dir"], "--model"),
        (["--set", "scorer.nam=1"], "--set: override 'scorer.nam=1'"),
    ],
)
def test_bench_quality_bad_arguments_exit_2_naming_them(argv, needle, capsys):
    assert main(["bench", "quality", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and needle in captured.err


def test_run_on_a_trained_shapes_model_prints_its_answers_and_writes_an_overlay(
    trained_shapes, tmp_path, capsys
):
    out, _ = trained_shapes
    png = tmp_path / "run.png"
    argv = ["run", "--model", f"shapes:{out}", "--scenes", "3", "--first", "5",
            "--out", str(png), "--set", "layer=2"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    items = examples("test", 8)[5:]
    unreduced = [VOCAB[i] for i in answer_ids(load(out), items)]
    for example, answer in zip(items, unreduced, strict=True):
        line = next(line for line in printed.splitlines() if line.startswith(example.question))
        assert line.split()[len(example.question.split()) :][:2] == [example.answer, answer]
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert "no timings" in printed and f"wrote {png}" in printed


def test_viz_on_a_trained_shapes_model_titles_the_scene(trained_shapes, tmp_path, capsys):
    out, _ = trained_shapes
    png = tmp_path / "viz.png"
    assert main(["viz", "--model", f"shapes:{out}", "--scene", "2", "--out", str(png)]) == 0
    printed = capsys.readouterr().out
    assert examples("test", 3)[2].question in printed
    assert png.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--scenes", "0"], "--scenes"),
        (["run", "--first", "-1"], "--first"),
        (["run", "--image", "x.png"], "--image"),
        (["run", "--model", "shapes:/no/such"], "--model"),
        (["run", "--set", "keep_ratio=2"], "--set"),
        (["viz", "--scene", "-1"], "--scene"),
        (["viz", "--image", "32x32"], "--image"),
    ],
)
def test_shapes_commands_refuse_bad_arguments_before_loading(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def _config_args(config: str, *overrides: str):
    import argparse

    return argparse.Namespace(config=config, set=list(overrides))


def test_a_single_stage_preset_moves_to_the_reduction_layer_unless_set_says_otherwise():
    from pact.cli.run_shapes import shapes_config
    from pact.config import PactConfig
    from pact.models.shapes.spec import DECODER, REDUCTION_LAYER

    args = _config_args("pact")
    config, notes = shapes_config(args, DECODER["layers"])
    assert [stage.layer for stage in config.stages] == [REDUCTION_LAYER] and notes == []
    # Everything but the layer is the preset's own.
    expected = PactConfig.load("pact").stages[0].model_dump(exclude={"layer"})
    assert config.stages[0].model_dump(exclude={"layer"}) == expected
    assert args.set == [f"layer={REDUCTION_LAYER}"]  # labels show where it ran
    config, _ = shapes_config(_config_args("pact", "layer=3"), DECODER["layers"])
    assert [stage.layer for stage in config.stages] == [3]
    config, _ = shapes_config(_config_args("pact", "stages.0.layer=2"), DECODER["layers"])
    assert [stage.layer for stage in config.stages] == [2]


def test_multi_stage_presets_lose_only_the_stages_past_the_decoder_with_a_note():
    from pact.cli.run_shapes import shapes_config
    from pact.config import PactConfig

    written = [stage.layer for stage in PactConfig.load("tome").stages]
    config, notes = shapes_config(_config_args("tome"), 6)
    assert [stage.layer for stage in config.stages] == [layer for layer in written if layer < 6]
    dropped = [layer for layer in written if layer >= 6]
    assert notes == [f"preset stages at layers {dropped} dropped: the model has 6 decoder layers"]


def test_config_files_run_as_written_and_stages_past_the_decoder_are_refused(tmp_path):
    from pact.cli.run_shapes import shapes_config
    from pact.config import PactConfig

    path = tmp_path / "mine.yaml"
    path.write_text("stages:\n  - {layer: 4, scorer: {name: euti}, keep_ratio: 0.5}\n")
    config, notes = shapes_config(_config_args(str(path)), 6)
    assert config == PactConfig.load(path) and notes == []  # not moved to layer 1
    with pytest.raises(ValueError, match=r"stages at layers \[4\] are past this model's 3"):
        shapes_config(_config_args(str(path)), 3)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--model", "llava", "--scenes", "2"], "--scenes applies to trained models"),
        (["run", "--prompt", "hi"], "--prompt applies to checkpoint models"),
        (["run", "--model", "llava", "--first", "1"], "--first applies to trained models"),
        (["viz", "--model", "llava", "--scene", "1"], "--scene applies to trained models"),
        (["viz", "--text", "llama"], "--text applies to tiny models"),
        (["viz", "--seed", "3"], "--seed applies to tiny models"),
    ],
)
def test_options_that_mean_nothing_for_the_model_are_refused(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err


@pytest.mark.parametrize(
    ("preset", "layers"),
    [
        ("dart", [1]),
        ("fastv", [1]),
        ("divprune", [0]),
        ("pyramiddrop", []),
        ("sparsevlm", [3]),
        ("tome", [0, 1, 2, 3, 4, 5]),
    ],
)
def test_presets_are_fitted_to_the_shapes_model(preset, layers):
    from argparse import Namespace

    from pact.cli.run_shapes import shapes_config

    config, notes = shapes_config(Namespace(config=preset, set=[]), 6)
    assert [stage.layer for stage in config.stages] == layers
    assert bool(notes) == (preset in ("pyramiddrop", "sparsevlm", "tome"))


def test_baseline_methods_place_their_stages():
    from pact.bench.quality.methods import Setting, overrides_for

    def config(name: str, value: float):
        return Setting(name, 1 - value, value, overrides_for(name, value, 1), 6).config()

    assert [s.layer for s in config("dart", 0.5).stages] == [1]
    assert [s.layer for s in config("divprune", 0.5).stages] == [0]  # the projector's output
    pyramid = config("pyramiddrop", 0.6)
    assert [(s.layer, s.keep_ratio) for s in pyramid.stages] == [(1, 0.6), (3, 0.6), (4, 0.6)]
    sparse = config("sparsevlm", 0.6)  # one knob, every stage; each stage still recycles
    assert [(s.layer, s.keep_ratio) for s in sparse.stages] == [(1, 0.6), (2, 0.6), (3, 0.6)]
    assert all(s.recycling.clusterer.name == "dpc_knn" for s in sparse.stages)
    assert config("fastv", 0.5).stages[0].scorer.query == "last"
    assert config("fastv_mean", 0.5).stages[0].scorer.query == "all"
