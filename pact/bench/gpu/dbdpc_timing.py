"""DBDPC speed: one clusterer call on synthetic keys, its steps, and its host synchronisations.

Keys are bf16 (what a bf16 model's layer gives) turned into float32 features, as the
pipeline does; distances are float32. Two kinds of keys:

* ``random``: Gaussian keys. Every pair is far apart, every token is a center: one round.
* ``smooth``: a smooth random function of a 2-D patch position plus noise, like the tokens
  of an image; tens of centers found over 10-20 rounds, the case where the per-round host
  round-trips of the legacy form add up.

Forms: ``legacy`` (the previous implementation: boolean-index compaction every round, one
host synchronisation per round) and ``masked:K`` (:func:`pact.clusterers.dbdpc.dbdpc_centers`
checking termination every ``K`` rounds).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pact.bench.gpu.gpu_timing import count_syncs, device_activity, peak_bytes, timed_calls
from pact.clusterers.common import density_order, gaussian_density
from pact.clusterers.dbdpc import DbdpcConfig, dbdpc_centers
from pact.distance import cosine_distances

_DEFAULTS = DbdpcConfig(name="dbdpc")
CUTOFF, DC = _DEFAULTS.cutoff, _DEFAULTS.dc


def legacy_centers(distances: Tensor, order: Tensor, cutoff: float) -> Tensor:
    """DBDPC's centers as pact computed them before the masked form (kept as a reference).

    Compacts the uncovered set with boolean indexing every round: a host sync per round.
    """
    ranked = distances[order][:, order]  # row/column r = r-th densest token
    n = ranked.shape[0]
    denser_only = ranked.masked_fill(
        torch.ones(n, n, dtype=torch.bool, device=ranked.device).triu(), float("inf")
    )
    uncovered = torch.arange(n, device=ranked.device)
    is_center = torch.zeros(n, dtype=torch.bool, device=ranked.device)
    while uncovered.numel():
        nearest_denser = denser_only[uncovered][:, uncovered].amin(dim=1)
        new_centers = uncovered[nearest_denser > cutoff]
        is_center[new_centers] = True
        covered = (ranked[uncovered][:, new_centers] <= cutoff).any(dim=1)
        uncovered = uncovered[~covered]
    return torch.sort(order[is_center]).values


def synthetic_keys(n: int, dim: int, kind: str, device, seed: int = 0) -> Tensor:
    """``[n, dim]`` bf16 keys of ``kind`` (``random`` or ``smooth``), made on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "random":
        keys = torch.randn(n, dim, generator=generator)
    elif kind == "smooth":
        side = int(n**0.5) + 1
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        position = torch.stack([ys.flatten(), xs.flatten()], dim=1)[:n].float() / side
        waves = 8.0 * torch.randn(2, 64, generator=generator)
        phase = 6.283 * torch.rand(64, generator=generator)
        field = torch.cos(position @ waves + phase) @ torch.randn(64, dim, generator=generator)
        keys = field + 2.0 * torch.randn(dim, generator=generator)
        keys = keys + 0.05 * keys.std() * torch.randn(n, dim, generator=generator)
    else:
        raise ValueError(f"kind must be 'random' or 'smooth'; got {kind!r}")
    return keys.to(torch.bfloat16).to(device)


def centers_function(form: str) -> Callable[[Tensor, Tensor, float], Tensor]:
    if form == "legacy":
        return legacy_centers
    name, _, every = form.partition(":")
    if name != "masked":
        raise ValueError(f"form must be 'legacy' or 'masked[:K]'; got {form!r}")
    check_every = int(every) if every else None
    if check_every is None:
        return dbdpc_centers
    return lambda distances, order, cutoff: dbdpc_centers(distances, order, cutoff, check_every)


def cluster_steps(features: Tensor, centers_fn, mark: Callable[[str], None] | None = None):
    """DBDPC as :class:`pact.clusterers.dbdpc.Dbdpc` runs it, with ``mark(step)`` between
    the steps (distances, density and order, centers, labels)."""
    mark = mark or (lambda step: None)
    distances = cosine_distances(features)
    mark("distances")
    order = density_order(gaussian_density(distances, DC))
    mark("density")
    centers = centers_fn(distances, order, CUTOFF)
    mark("centers")
    labels = distances[:, centers].argmin(dim=1)
    mark("labels")
    return labels, centers


def step_milliseconds(features: Tensor, centers_fn, repeats: int) -> dict[str, float]:
    """Median milliseconds of each step (CUDA events on CUDA, host clock on CPU)."""
    cuda = features.device.type == "cuda"
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        marks: list[tuple[str, Any]] = []

        def mark(step: str, marks=marks) -> None:
            if cuda:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                marks.append((step, event))
            else:
                marks.append((step, time.perf_counter()))

        mark("start")
        cluster_steps(features, centers_fn, mark)
        if cuda:
            torch.cuda.synchronize(features.device)
        for (_, before), (step, after) in itertools.pairwise(marks):
            spent = before.elapsed_time(after) if cuda else (after - before) * 1000
            samples.setdefault(step, []).append(spent)
    return {step: statistics.median(values) for step, values in samples.items()}


def time_dbdpc(
    n: int, dim: int, kind: str, form: str, device, repeats: int, warmup: int
) -> dict[str, Any]:
    """Every figure of one (size, kind, form): times, steps, syncs, GPU-busy share, memory."""
    features = synthetic_keys(n, dim, kind, device).float()
    centers_fn = centers_function(form)

    def call():
        return cluster_steps(features, centers_fn)

    _, centers = call()
    timing = timed_calls(call, device, repeats, warmup)
    activity = device_activity(call, device)
    busy = None if activity is None else activity.get("busy_ms")
    event_ms = timing["event_ms"]
    return {
        "n": n,
        "dim": dim,
        "kind": kind,
        "form": form,
        "centers": int(centers.numel()),
        **timing,
        "steps_ms": step_milliseconds(features, centers_fn, max(1, min(repeats, 5))),
        "syncs_per_call": count_syncs(call, device),
        "gpu_busy_ms": busy,
        "host_bound_share": None if busy is None or not event_ms else max(0.0, 1 - busy / event_ms),
        "peak_bytes": peak_bytes(call, device),
        "profiler_error": None if activity is None else activity.get("error"),
    }
