"""``pact bench clusterers``: every registered clusterer on the same synthetic keys.

Keys are the ``smooth`` image-like keys of :func:`pact.bench.gpu.dbdpc_timing.synthetic_keys`
(a smooth random function of a 2-D patch grid plus noise), bf16 turned into float32
features as the pipeline does. Per clusterer, device and size: median seconds of a few
calls (CUDA-synchronised on GPU), clusters made, and the largest cosine distance from a
member to its cluster's center.

Clusterers whose cluster count is a setting run at half the tokens (see :data:`SETTINGS`),
so their times compare at one output size; the threshold-based ones (``dbdpc``,
``dbscan``) run at their preset settings and make however many clusters those give.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from pact.bench.gpu.dbdpc_timing import synthetic_keys
from pact.bench.gpu.gpu_timing import synchronize
from pact.distance import normalize
from pact.registry import CLUSTERERS
from pact.tensors import Clustering

SIZES = (576, 2304, 5000, 8748)
"""Visual tokens per image of LLaVA-1.5, LLaVA-NeXT (any-res) and LLaVA-OneVision."""
DIM = 512
SETTINGS: dict[str, dict[str, Any]] = {
    "tome": {"merge_ratio": 0.5},
    "agglomerative": {"keep_ratio": 0.5},
    "kmeans": {"keep_ratio": 0.5},
    "dpc": {"keep_ratio": 0.5},
}
"""Settings per clusterer; those absent (dbdpc, dbscan, none, plugins) use their defaults.
Count-based clusterers target ceil(n / 2) clusters (ToMe: floor(n / 2) pairs merged)."""
SETTINGS_NOTE = (
    "count-based clusterers target half the tokens (tome merge_ratio=0.5, agglomerative / "
    "kmeans / dpc keep_ratio=0.5); the others run at their default (preset) settings"
)
SKIPPED = "skipped (budget)"


@dataclass
class ClustererRow:
    """One clusterer at one size on one device."""

    clusterer: str
    device: str
    n: int
    settings: dict[str, Any]
    status: str
    """``ok``, :data:`SKIPPED`, or ``error: ...``."""
    seconds: float | None = None
    """Median seconds of the timed calls."""
    calls: int = 0
    clusters: int | None = None
    max_distance: float | None = None
    """Largest cosine distance from a member to its cluster's center."""


def max_member_distance(features: Tensor, clustering: Clustering) -> float:
    """Largest cosine distance between a kept token and its cluster's center (0 if none)."""
    member = clustering.labels >= 0
    if not bool(member.any()):
        return 0.0
    unit = normalize(features)
    centers = clustering.centers[clustering.labels[member]]
    # Row-wise products: memory O(n F), where the full distance matrix would be O(n^2).
    cosine = (unit[member] * unit[centers]).sum(dim=1)
    return float((1.0 - cosine).clamp(min=0.0).max())


def make_clusterer(name: str):
    """The registered clusterer ``name`` at its benchmark settings."""
    return CLUSTERERS.get(name)(dict(SETTINGS.get(name, {})))


def timed(clusterer, features: Tensor, repeats: int, budget: float):
    """``(median seconds, calls, clustering)``: stops repeating once ``budget`` is spent.

    The first call is untimed warm-up (lazy imports, kernel loading, allocator growth) unless
    it alone took longer than ``budget``, in which case it is the only sample.
    """
    sizes = torch.ones(features.shape[0], device=features.device)
    device = features.device
    times: list[float] = []
    start = time.perf_counter()
    clustering = clusterer.cluster(features, sizes)
    synchronize(device)
    first = time.perf_counter() - start
    if first > budget:
        return first, 1, clustering
    spent = first
    while len(times) < repeats and spent < budget:
        start = time.perf_counter()
        clustering = clusterer.cluster(features, sizes)
        synchronize(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return statistics.median(times), len(times), clustering


def bench_clusterer(
    name: str, sizes, dim: int, device: str, repeats: int, budget: float, seed: int, progress
) -> list[ClustererRow]:
    """One clusterer at every size (ascending); larger sizes are skipped once a call at a
    smaller one took longer than ``budget`` seconds (they would only take longer)."""
    settings = dict(SETTINGS.get(name, {}))
    rows: list[ClustererRow] = []
    over_budget = False
    for n in sorted(sizes):
        row = ClustererRow(name, device, n, settings, SKIPPED)
        if not over_budget:
            try:
                features = synthetic_keys(n, dim, "smooth", device, seed).float()
                seconds, calls, clustering = timed(make_clusterer(name), features, repeats, budget)
                row.status, row.seconds, row.calls = "ok", seconds, calls
                row.clusters = int(clustering.centers.numel())
                row.max_distance = max_member_distance(features, clustering)
                over_budget = seconds > budget
            except Exception as error:  # a failing clusterer is a finding, not a crash
                row.status = f"error: {type(error).__name__}: {error}".splitlines()[0][:200]
        rows.append(row)
        progress.update(1)
    return rows


def default_devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def run_clusterers(
    names=None,
    sizes=SIZES,
    dim: int = DIM,
    devices=None,
    repeats: int = 3,
    budget: float = 20.0,
    seed: int = 0,
    progress=None,
) -> dict[str, Any]:
    """Every clusterer (default: all registered, plugins included) on every device and size.

    ``progress``: anything with ``update(k)`` (a tqdm bar), advanced once per measurement.
    Returns a JSON-ready dict: ``rows`` plus what was run and on what.
    """
    names = list(CLUSTERERS.names() if names is None else names)
    devices = list(default_devices() if devices is None else devices)
    progress = progress or _NoProgress()
    rows = []
    for device in devices:
        for name in names:
            rows += bench_clusterer(name, sizes, dim, device, repeats, budget, seed, progress)
    return {
        "benchmark": "clusterers",
        "keys": f"smooth synthetic image-like keys (pact.bench.gpu.dbdpc_timing), dim {dim}",
        "settings_note": SETTINGS_NOTE,
        "sizes": sorted(sizes),
        "dim": dim,
        "devices": devices,
        "repeats": repeats,
        "budget_seconds": budget,
        "seed": seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": [asdict(row) for row in rows],
    }


class _NoProgress:
    def update(self, count: int = 1) -> None:
        pass


def plot(report: dict[str, Any], path) -> None:
    """Seconds vs n, log-log, one curve per clusterer and device (PNG at ``path``)."""
    from pact.bench.plotting import figure, save

    fig, axis = figure()
    series: dict[str, list[tuple[int, float]]] = {}
    for row in report["rows"]:
        if row["status"] == "ok":
            series.setdefault(f"{row['clusterer']} ({row['device']})", []).append(
                (row["n"], row["seconds"])
            )
    for label, points in series.items():
        axis.plot(*zip(*points, strict=True), marker="o", label=label)
    axis.set(xscale="log", yscale="log", xlabel="tokens n", ylabel="seconds (median)")
    axis.set_title(f"Clusterers on smooth synthetic keys, dim {report['dim']}")
    save(fig, axis, path)
