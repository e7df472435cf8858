"""`pact bench clusterers`: every registered clusterer, figures checked against direct calls."""

from __future__ import annotations

import json
import re

import pytest
import torch

import pact
from pact.bench.gpu.dbdpc_timing import synthetic_keys
from pact.cli import main
from pact.clusterers.base import Clusterer, ClustererConfig
from pact.distance import cosine_distances
from pact.tensors import Clustering

pytestmark = pytest.mark.usefixtures("single_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Probe(Clusterer):
    """A plugin stand-in: pairs neighbouring tokens."""

    Config = ClustererConfig

    def cluster(self, features, sizes):
        n = features.shape[0]
        labels = torch.arange(n) // 2
        return Clustering(labels=labels, centers=torch.arange(0, n, 2))


@pytest.fixture
def probe_plugin():
    pact.CLUSTERERS.register("bench_probe", _Probe)
    yield "bench_probe"
    pact.CLUSTERERS.unregister("bench_probe")


@pytest.fixture(scope="module")
def keys():
    return {n: synthetic_keys(n, 512, "smooth", "cpu", seed=0).float() for n in (64, 128)}


def test_every_clusterer_matches_a_direct_call(tmp_path, capsys, keys, probe_plugin):
    json_path, png_path = tmp_path / "c.json", tmp_path / "c.png"
    argv = ["bench", "clusterers", "--sizes", "64,128", "--repeats", "1", "--devices", "cpu",
            "--json", str(json_path), "--plot", str(png_path), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads(json_path.read_text(encoding="utf-8"))
    assert png_path.read_bytes()[:8] == PNG_MAGIC
    names = pact.CLUSTERERS.names()
    assert probe_plugin in names
    assert sorted({row["clusterer"] for row in report["rows"]}) == names
    assert len(report["rows"]) == 2 * len(names)
    assert "half the tokens" in out
    for row in report["rows"]:
        assert re.search(rf"^cpu\s+{row['clusterer']}\s", out, flags=re.MULTILINE)
        assert row["status"] == "ok", row
        assert row["seconds"] >= 0 and row["calls"] == 1
        features = keys[row["n"]]
        direct = pact.CLUSTERERS.get(row["clusterer"])(row["settings"])
        clustering = direct.cluster(features, torch.ones(row["n"]))
        assert row["clusters"] == clustering.centers.numel(), row
        distances = cosine_distances(features)
        member = clustering.labels >= 0
        gaps = distances[member, clustering.centers[clustering.labels[member]]]
        assert row["max_distance"] == pytest.approx(float(gaps.max()), abs=1e-5), row
    # Count-based clusterers were set to half the tokens.
    by = {(row["clusterer"], row["n"]): row for row in report["rows"]}
    for name in ("tome", "kmeans", "dpc", "agglomerative"):
        assert by[(name, 128)]["clusters"] == 64, name


def test_dbdpc_members_lie_within_the_cutoff(tmp_path, keys):
    json_path = tmp_path / "c.json"
    argv = ["bench", "clusterers", "--clusterers", "dbdpc", "--sizes", "128", "--repeats", "1",
            "--json", str(json_path), "--quiet", "--devices", "cpu"]  # fmt: skip
    assert main(argv) == 0
    (row,) = json.loads(json_path.read_text(encoding="utf-8"))["rows"]
    cutoff = pact.CLUSTERERS.get("dbdpc").Config(name="dbdpc").cutoff
    clustering = pact.CLUSTERERS.get("dbdpc")().cluster(keys[128], torch.ones(128))
    distances = cosine_distances(keys[128])
    recomputed = float(distances[torch.arange(128), clustering.centers[clustering.labels]].max())
    assert recomputed <= cutoff
    assert row["max_distance"] == pytest.approx(recomputed, abs=1e-5)
    assert row["max_distance"] <= cutoff + 1e-5
    assert 1 < row["clusters"] < 128  # smooth keys: real clusters, not all singletons


def test_budget_skips_larger_sizes(tmp_path, capsys):
    json_path = tmp_path / "c.json"
    argv = ["bench", "clusterers", "--clusterers", "tome,dbdpc", "--sizes", "128,64", "--quiet",
            "--budget", "1e-9", "--devices", "cpu", "--json", str(json_path)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(json_path.read_text(encoding="utf-8"))["rows"]
    assert [(r["clusterer"], r["n"], r["status"]) for r in rows] == [
        ("tome", 64, "ok"),
        ("tome", 128, "skipped (budget)"),
        ("dbdpc", 64, "ok"),
        ("dbdpc", 128, "skipped (budget)"),
    ]
    assert all(r["calls"] == 1 for r in rows if r["status"] == "ok")  # no repeat past budget
    assert "skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--sizes", "64,x"], "--sizes"),
        (["--sizes", "0"], "--sizes"),
        (["--clusterers", "dbdcp"], "--clusterers: unknown clusterer 'dbdcp'"),
        (["--devices", "tpu"], "--devices"),
        (["--budget", "0"], "--budget"),
        (["--repeats", "0"], "--repeats"),
        (["--json", "/no/such/folder/c.json"], "--json"),
    ],
)
def test_bad_arguments_exit_2_naming_them(argv, needle, capsys):
    assert main(["bench", "clusterers", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("pact bench clusterers: ")
    assert needle in captured.err


def test_help_of_the_bench_group(capsys):
    for argv in (["bench"], ["bench", "clusterers"], ["bench", "fidelity"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: pact {' '.join(argv)}")
    with pytest.raises(SystemExit):
        main(["bench", "clusterers", "--help"])
    assert "--budget SECONDS" in capsys.readouterr().out
