"""`pact sweep GRID.yaml`: cells expanded from a grid, run here or through submitit's local
executor, skipped once done, collected into one table; checked against the benchmark and
evaluation run directly."""

from __future__ import annotations

import csv
import json
import re

import pytest
from helpers_eval import expected, noise_images, write_task

from pact.bench.fidelity import run_fidelity
from pact.cli import main
from pact.config import PactConfig

pytestmark = pytest.mark.usefixtures("single_thread")

BENCH_GRID = """configs: [pact]
overrides:
  keep_ratio: [0.3, 0.6]
bench:
  benchmarks: [fidelity]
  options: [--new-tokens, "2"]
"""


def _rows(folder) -> list[dict]:
    with (folder / "sweep.csv").open(encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_bench_cells_run_here_are_skipped_once_done_and_collected(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(BENCH_GRID, encoding="utf-8")
    assert main(["sweep", str(grid)]) == 0
    assert "2 cells, 0 done, 2 to run" in capsys.readouterr().out
    folder = tmp_path / "grid-sweep"
    rows = _rows(folder)
    assert [(row["config"], row["overrides"], row["status"]) for row in rows] == [
        ("pact", "keep_ratio=0.3", "done"), ("pact", "keep_ratio=0.6", "done")
    ]  # fmt: skip
    for row, keep in zip(rows, (0.3, 0.6), strict=True):
        config = tmp_path / f"direct-{keep}.yaml"
        PactConfig.load("pact", [f"keep_ratio={keep}"]).to_yaml(config)
        [point] = run_fidelity([str(config)], {}, "llava", "qwen2", 2, 0, False)["points"]
        assert float(row["value"]) == pytest.approx(point["top1_steps"])
        assert float(row["reduction_ratio"]) == pytest.approx(point["reduction_ratio"])
    assert float(rows[0]["reduction_ratio"]) > float(rows[1]["reduction_ratio"])
    assert (folder / "sweep.png").stat().st_size > 0
    stamps = {path.name: path.stat().st_mtime_ns for path in folder.glob("*.json")}
    assert main(["sweep", str(grid)]) == 0  # nothing left to run: the cells are kept
    assert "2 cells, 2 done, 0 to run" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("pact__*.json")} == {
        name: stamp for name, stamp in stamps.items() if name.startswith("pact__")
    }


def test_eval_cells_give_each_task_metric_and_ratio(tmp_path, capsys, monkeypatch):
    pytest.importorskip("lmms_eval")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    images = noise_images(2)
    answers, visual_in, visual_out = expected(images)
    write_task(tmp_path, images, [answers[0], "never-answered"])
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "configs: [none, pact]\noutput: cells\neval:\n  model: tiny:qwen2_vl\n"
        "  tasks: [tiny_vqa]\n  include_path: [.]\n  max_new_tokens: 3\n  device: cpu\n",
        encoding="utf-8",
    )
    assert main(["sweep", str(grid)]) == 0, capsys.readouterr().err
    rows = {row["config"]: row for row in _rows(tmp_path / "cells")}
    assert rows["pact"]["metric"] == "exact_match,none"
    assert float(rows["pact"]["value"]) == 0.5
    assert float(rows["pact"]["reduction_ratio"]) == round(1 - visual_out / visual_in, 4)
    assert float(rows["none"]["reduction_ratio"]) == 0.0


def test_cells_submitted_through_submitit_local_executor(tmp_path, capsys):
    pytest.importorskip("submitit")
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        BENCH_GRID.replace("[0.3, 0.6]", "[0.3]")
        + "submit:\n  cluster: local\n  parameters: {timeout_min: 10}\n",
        encoding="utf-8",
    )
    assert main(["sweep", str(grid)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert re.search(r"submitted pact__keep_ratio=0\.3__fidelity: job \d+", out)
    [row] = _rows(tmp_path / "grid-sweep")
    assert row["status"] == "done" and 0 < float(row["reduction_ratio"]) < 1
    written = json.loads((tmp_path / "grid-sweep" / "sweep.json").read_text(encoding="utf-8"))
    assert written["cells"][0]["value"] == pytest.approx(float(row["value"]))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("configs: [pact]\n", r"give exactly one of 'eval' .* or 'bench'"),
        ("configs: [pact]\nbench: {benchmarks: [speed]}\n", r"bench\.benchmarks\.0"),
        ("configs: [pact]\nbench: {benchmarks: [fidelity]}\nrepeat: 2\n", r"repeat"),
        ("configs: [pact]\noverrides: {keep_ratio: []}\nbench: {benchmarks: [fidelity]}\n",
         r"overrides\.keep_ratio: give at least one value"),
        ("configs: [pact]\noverrides: {clusterer.cutof: [0.3]}\nbench: {benchmarks: [fidelity]}\n",
         r"stages\.0\.clusterer\.cutof"),
        ("configs: [pactt]\nbench: {benchmarks: [fidelity]}\n", r"pactt"),
    ],
)  # fmt: skip
def test_bad_grids_are_named_before_any_cell_runs(tmp_path, capsys, text, pattern):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text, encoding="utf-8")
    assert main(["sweep", str(grid)]) == 2
    assert re.search(pattern, capsys.readouterr().err, re.DOTALL)
    assert not (tmp_path / "grid-sweep").exists()


def test_missing_grid_and_missing_submitit_are_named(tmp_path, capsys, monkeypatch):
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert "GRID: " in capsys.readouterr().err
    grid = tmp_path / "grid.yaml"
    grid.write_text(BENCH_GRID + "submit: {cluster: slurm}\n", encoding="utf-8")
    monkeypatch.setattr("pact.backends.available", lambda module: module != "submitit")
    assert main(["sweep", str(grid)]) == 2
    assert "pip install 'pact-vlm[sweep]'" in capsys.readouterr().err
