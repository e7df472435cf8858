"""benchmarks/gpu_suite.py: its smoke mode on CPU (every section, sane values), and the
checks that need CUDA (skipped without it).

The flash_attn flash-kernel invariant lives in tests/test_hook_exactness.py; here the
same invariant runs through torch's sdpa restricted to its own flash backend, which needs
no flash_attn package.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from pact.bench.gpu.dbdpc_timing import legacy_centers, synthetic_keys
from pact.bench.gpu.flash_check import dispatch_report, duplicates_invariant
from pact.clusterers.common import density_order, gaussian_density
from pact.clusterers.dbdpc import Dbdpc, dbdpc_centers
from pact.distance import cosine_distances
from pact.models.tiny import build

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run (tiny shapes on CPU), shared by the checks below."""
    out = tmp_path_factory.mktemp("gpu_suite")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        returned = load_suite().main(["--smoke", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    written = json.loads((out / "gpu_suite.json").read_text())
    return returned, written, (out / "gpu_suite.md").read_text()


def test_smoke_writes_every_section(smoke):
    returned, written, table = smoke
    for key in ("meta", "flash", "dbdpc", "model", "tuned", "end_to_end", "summary"):
        assert key in written, key
    assert "model_error" not in written
    assert written["meta"]["attn_implementation"] == "sdpa"
    assert written["meta"]["torch"] == torch.__version__
    assert returned["meta"]["command"] == written["meta"]["command"]
    for title in ("## 1. Flash path", "## 2. DBDPC", "## 3. End to end", "## Goals"):
        assert title in table


def test_smoke_flash_section(smoke):
    flash = smoke[1]["flash"]
    invariant = flash["duplicates_invariant_bf16"]
    for case in ("unpadded", "padded"):
        assert invariant[case]["holds"], invariant
    rows = flash["rows_vs_alone_bf16"]
    assert rows["pact"]["max_abs_diff"] <= 0.05 and rows["none"]["max_abs_diff"] <= 0.05
    one, two = flash["dispatch_on_model"]
    assert one["batch"] == 1 and two["batch"] == 2
    # Batch 1: every reduced layer gets the bias as a 9th..16th head dimension, no mask.
    assert one["reduced_layers"] == one["reduced_layers_with_extra_dim"] == 4
    assert one["masked_calls_in_reduced_layers"] == 0
    assert one["flash_only_prefill"] == "ok"
    assert one["layers"][0]["head_dims"] == [one["model_head_dim"]]


def test_smoke_dbdpc_section(smoke):
    rows = smoke[1]["dbdpc"]["rows"]
    assert len(rows) == 2 * 2 * 3  # sizes x kinds x forms
    centers = {}
    for row in rows:
        assert "error" not in row, row
        assert row["wall_ms"] > 0 and row["event_ms"] is None  # CPU: no CUDA events
        assert set(row["steps_ms"]) == {"distances", "density", "centers", "labels"}
        centers.setdefault((row["n"], row["kind"]), set()).add(row["centers"])
    assert all(len(found) == 1 for found in centers.values())  # every form agrees
    assert centers[(64, "random")] == {64}  # random keys: every token its own center
    assert max(centers[(160, "smooth")]) < 160


def test_smoke_end_to_end_section(smoke):
    written = smoke[1]
    section = written["end_to_end"]
    assert not section["skipped"]
    rows = {(row["batch"], row["config"]): row for row in section["rows"]}
    assert set(rows) == {(b, c) for b in (1, 2) for c in ("none", "pact", "fastv", "tome")}
    for method, tuned in written["tuned"].items():
        assert abs(tuned["removal"] - 0.70) <= 0.05, method
    for (batch, config), row in rows.items():
        assert row["decode_tokens_per_s"] > 0
        if config == "none":
            assert row["prefill_seconds"] > 0 and row["kv_bytes_none"] > 0
            continue
        assert row["visual_in"] == batch * written["model"]["visual_tokens"]
        assert 0.6 <= row["removal"] <= 0.8
        assert row["ideal_speedup"] > 1 and math.isfinite(row["achieved_speedup"])
        assert row["kv_bytes_reduced"] == row["kv_bytes_expected"] < row["kv_bytes_none"]
        assert 0 < row["reduction_overhead"] < 10
    summary = written["summary"]
    assert [entry["batch"] for entry in summary["pact"]] == [1, 2]
    assert "dbdpc_share_of_unreduced_prefill" in summary


# ------------------------------------------------------------------ CUDA only
@cuda_only
@pytest.mark.parametrize(("n", "kind"), [(300, "random"), (1200, "smooth"), (4000, "smooth")])
def test_dbdpc_on_cuda_equals_cpu(n, kind):
    """Same distances and order: the masked rounds on CUDA pick the CPU centers, which are
    also the legacy form's."""
    features = synthetic_keys(n, 512, kind, "cpu", seed=n).float()
    distances = cosine_distances(features)
    order = density_order(gaussian_density(distances, 2.0))
    on_cpu = dbdpc_centers(distances, order, 0.21)
    on_cuda = dbdpc_centers(distances.cuda(), order.cuda(), 0.21)
    assert on_cuda.device.type == "cuda"
    assert torch.equal(on_cuda.cpu(), on_cpu)
    assert torch.equal(on_cpu, legacy_centers(distances, order, 0.21))


@cuda_only
@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_dbdpc_clusterer_on_cuda_matches_the_cpu_rounds(kind):
    """The whole clusterer on CUDA: its centers and labels are what the CPU computes from
    the distances CUDA measured (the matmul may round differently on each device)."""
    features = synthetic_keys(2000, 512, kind, "cuda", seed=3).float()
    result = Dbdpc().cluster(features, torch.ones(2000, device="cuda"))
    distances = cosine_distances(features)
    order = density_order(gaussian_density(distances, 2.0))
    centers = legacy_centers(distances.cpu(), order.cpu(), 0.21)
    assert torch.equal(result.centers.cpu(), centers)
    assert torch.equal(result.labels.cpu(), distances.cpu()[:, centers].argmin(dim=1))


@cuda_only
def test_merged_duplicates_under_the_sdpa_flash_kernel():
    """bf16, sdpa restricted to its flash backend: merged duplicates attend like the copies."""
    result = duplicates_invariant("sdpa", "cuda", torch.bfloat16)
    assert result["unpadded"]["flash_only"] == "ok"
    for case in ("unpadded", "padded"):
        assert result[case]["holds"], result


@cuda_only
def test_reduced_layers_run_the_flash_kernel_at_batch_one():
    tiny = build("llava_onevision", text="qwen2", dtype=torch.bfloat16, device="cuda")
    batch = tiny.inputs([["text:5", "image", "text:6"]])
    report = dispatch_report(tiny, batch, "pact", "sdpa")
    assert report["reduced_layers"] == report["reduced_layers_with_extra_dim"] > 0
    assert report["masked_calls_in_reduced_layers"] == 0
    assert report["flash_only_prefill"] == "ok"  # no call of that prefill left flash
    assert report["attention_kernels"]  # what torch picked unforced (flash or cuDNN's)
