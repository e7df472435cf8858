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


def test_comparisons_name_overlapping_intervals_and_pact_against_random():
    cells = [("pact", 0.95, [0.9, 1.0]), ("euti", 0.92, [0.88, 0.96]), ("random", 0.5, [0.4, 0.6])]
    rows = [{"method": m, "target": 0.9, "relative_accuracy": a, "relative_interval": i}
            for m, a, i in cells]  # fmt: skip
    rows.append({"method": "dbscan", "target": 0.9, "relative_accuracy": 0.99,
                 "relative_interval": [0.98, 1.0], "reduction_ratio": 0.8})
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
        assert line.split()[len(example.question.split()):][:2] == [example.answer, answer]
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


@pytest.mark.parametrize(
    ("preset", "layers"),
    [
        ("dart", [1]),
        ("fastv", [1]),
        ("divprune", [0]),
        ("pyramiddrop", []),
        ("tome", [0, 1, 2, 3, 4, 5]),
    ],
)
def test_presets_are_fitted_to_the_shapes_model(preset, layers):
    from argparse import Namespace

    from pact.cli.run_shapes import shapes_config

    config, notes = shapes_config(Namespace(config=preset, set=[]), 6)
    assert [stage.layer for stage in config.stages] == layers
    assert bool(notes) == (preset in ("pyramiddrop", "tome"))


def test_baseline_methods_place_their_stages():
    from pact.bench.quality.methods import Setting, overrides_for

    def config(name: str, value: float):
        return Setting(name, 1 - value, value, overrides_for(name, value, 1), 6).config()

    assert [s.layer for s in config("dart", 0.5).stages] == [1]
    assert [s.layer for s in config("divprune", 0.5).stages] == [0]  # the projector's output
    pyramid = config("pyramiddrop", 0.6)
    assert [(s.layer, s.keep_ratio) for s in pyramid.stages] == [(1, 0.6), (3, 0.6), (4, 0.6)]
    assert config("fastv", 0.5).stages[0].scorer.query == "last"
    assert config("fastv_mean", 0.5).stages[0].scorer.query == "all"
