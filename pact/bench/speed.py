"""``pact bench speed``: prefill latency, decoding speed, peak memory and KV-cache size of
each configuration, side by side with ``none`` measured in the same run.

Prefill figures come from :func:`pact.bench.prefill.measure_prefill` (runs of ``none`` and
the configuration alternating, median after a warm-up, CUDA-synchronised; it raises if the
KV cache lengths differ from what the kept counts imply). Decoding speed is
:func:`decode_rate`; tuning to a target ratio is :mod:`pact.bench.tuning`'s. Each
configuration's prefill latency ratio is against the ``none`` runs it was interleaved
with; its other ratios are against the ``none`` row. ``prefill_flops`` is the decoder's
analytic prefill FLOPs (:mod:`pact.flops`, from ``handle.stats``), the figure papers compare
methods by.
"""

from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from pact.bench import tuning
from pact.bench.gpu.gpu_timing import is_cuda, peak_bytes, synchronize
from pact.bench.prefill import interleaved_prefill_seconds, kv_bytes, measure_prefill, run_prefill
from pact.config import PactConfig
from pact.flops import DecoderShape
from pact.hooks import attached
from pact.models.shaped import Subject

PEAK_CPU = (
    "peak resident-set growth during one prefill above the RSS before it (after "
    "malloc_trim), sampled every 1 ms from /proc/self/statm; approximate"
)
PEAK_CUDA = "torch.cuda.max_memory_allocated during one prefill, above what was allocated before"
RATIO_KEYS = ("prefill_seconds", "decode_tokens_per_s", "peak_bytes", "kv_bytes", "visual_kept",
              "prefill_flops")  # fmt: skip


@dataclass
class Point:
    """One configuration at one strength: a preset name (or config file) and the overrides
    that set its strength knob; the benchmark builds the config from them."""

    config: str
    knob: str | None = None
    value: Any = None
    overrides: list[str] = field(default_factory=list)
    tuning: dict | None = None

    def load(self) -> PactConfig:
        return PactConfig.load(self.config, self.overrides)


def plan(configs: list[str], strengths: dict[str, tuple[str, tuple]]) -> list[Point]:
    """``none`` first, then each configuration at each value of its knob (or as it is)."""
    points = [Point("none")]
    for name in configs:
        knob, values = strengths.get(name, (None, (None,)))
        points += [
            Point(name, knob, value, [] if knob is None else [f"{knob}={value}"])
            for value in values
        ]
    return points


def tuned_point(subject: Subject, name: str, target: float, steps: int) -> Point:
    """``name`` with its knob set to remove about ``target`` of the visual tokens."""
    if name in tuning.METHOD_KNOBS:
        tuned = tuning.tune_method(subject.model, subject.batch, name, target, steps)
        knob = tuning.METHOD_KNOBS[name]
        value = tuned[knob.rpartition(".")[2]]
        overrides = [f"{knob}={value}"]
        if tuned.get("cutoff") not in (None, 0.21):  # pact lowered DBDPC's cutoff too
            overrides.append(f"clusterer.cutoff={tuned['cutoff']}")
        return Point(name, knob, value, overrides, tuned)
    knob, value, got, tries = tuning.tune_knob(subject.model, subject.batch, name, target, steps)
    return Point(name, knob, value, [f"{knob}={value}"], {"removal": got, "tries": tries})


# ------------------------------------------------------------------ decoding
class _StepClock(LogitsProcessor):
    """Host time (after a device synchronisation) at each generated token's logits."""

    def __init__(self, device):
        self.device, self.times = device, []

    def __call__(self, input_ids, scores):
        synchronize(self.device)
        self.times.append(time.perf_counter())
        return scores


def decode_rate(model, batch: dict, config: PactConfig | None, tokens: int) -> float:
    """Generated tokens per second over ``tokens`` decoding steps (all rows together)."""
    clock = _StepClock(batch["input_ids"].device)
    options = dict(max_new_tokens=tokens + 1, min_new_tokens=tokens + 1, do_sample=False)
    with attached(model, config or PactConfig()), torch.no_grad():
        model.generate(**batch, logits_processor=LogitsProcessorList([clock]), **options)
    return batch["input_ids"].shape[0] * tokens / (clock.times[-1] - clock.times[0])


# ------------------------------------------------------------------ memory
def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    """Give freed heap pages back to the OS, so the RSS before a call is what is live."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline is only less exact
        pass


def cpu_peak_bytes(fn) -> int:
    """Peak RSS growth during ``fn()``, polled by a thread.

    ``getrusage``'s ``ru_maxrss`` is the whole process's high-water mark, so after the
    ``none`` run it could not show any smaller peak; polling the current RSS can. Where
    /proc is missing, the ``ru_maxrss`` delta is the fallback.
    """
    if not os.path.exists("/proc/self/statm"):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    _trim()
    baseline = peak = _rss_bytes()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss_bytes())
            stop.wait(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        stop.set()
        thread.join()
    return max(peak, _rss_bytes()) - baseline


def _stats_and_peak(subject: Subject, config: PactConfig) -> dict[str, Any]:
    """One attached prefill: its peak memory, visual tokens kept and reduction seconds."""
    model, batch = subject.model, subject.batch
    device = batch["input_ids"].device
    with attached(model, config) as handle:
        handle.stats.reset()
        run = lambda: run_prefill(model, batch)  # noqa: E731
        peak = peak_bytes(run, device) if is_cuda(device) else cpu_peak_bytes(run)
        last = handle.stats.summary()["last_call"]
    kept = sum(last["visual_out"]) if handle.stats.last else subject.visual_tokens()
    visual_in = sum(last["visual_in"]) if handle.stats.last else subject.visual_tokens()
    flops = last["prefill_flops"] if handle.stats.last else unreduced_flops(subject)
    return {"visual_in": visual_in, "visual_kept": kept, "peak_bytes": peak,
            "seconds": last["seconds"], "prefill_flops": flops}  # fmt: skip


def unreduced_flops(subject: Subject) -> int:
    """Analytic decoder prefill FLOPs of the batch's rows without reduction."""
    shape = DecoderShape.from_config(subject.model.get_decoder().config)
    batch = subject.batch
    mask = batch.get("attention_mask")
    tokens = (
        mask.sum(dim=1).tolist()
        if mask is not None
        else [batch["input_ids"].shape[1]] * len(batch["input_ids"])
    )
    return sum(shape.prefill_flops(int(count)) for count in tokens)


# ------------------------------------------------------------------ measuring
def measure_point(subject: Subject, point: Point, repeats: int, decode_tokens: int) -> dict:
    """Every figure of one reduced configuration, with its paired ``none`` prefill."""
    config = point.load()
    report = measure_prefill(subject.model, subject.batch, config, repeats)
    row = asdict(point) | _stats_and_peak(subject, config)
    visual_in = row["visual_in"]
    row |= {
        "status": "ok",
        "reduction_ratio": 1 - row["visual_kept"] / visual_in if visual_in else 0.0,
        "prefill_seconds": report.reduced_seconds,
        "none_prefill_seconds": report.none_seconds,
        "ideal_speedup": report.ideal_speedup,
        "kv_bytes": report.kv_bytes_reduced,
        "kv_bytes_expected": report.kv_bytes_expected,
        "kv_bytes_none": report.kv_bytes_none,
        "decode_tokens_per_s": decode_rate(subject.model, subject.batch, config, decode_tokens),
    }
    return row


def measure_none(subject: Subject, rows: list[dict], repeats: int, decode_tokens: int) -> dict:
    """The ``none`` row; its prefill is the median of the ``none`` runs paired with the other
    rows (timed on its own only when there are none)."""
    model, batch, plain = subject.model, subject.batch, PactConfig()
    row = asdict(Point("none")) | _stats_and_peak(subject, plain) | {"status": "ok"}
    paired = [r for r in rows if r.get("status") == "ok"]
    if paired:
        row["prefill_seconds"] = statistics.median(r["none_prefill_seconds"] for r in paired)
        row["kv_bytes"] = paired[0]["kv_bytes_none"]
    else:
        row["prefill_seconds"] = interleaved_prefill_seconds(model, batch, plain, repeats)[0]
        row["kv_bytes"] = kv_bytes(run_prefill(model, batch))
    row |= {"none_prefill_seconds": row["prefill_seconds"], "reduction_ratio": 0.0,
            "ideal_speedup": 1.0, "kv_bytes_expected": row["kv_bytes"]}  # fmt: skip
    row["decode_tokens_per_s"] = decode_rate(model, batch, plain, decode_tokens)
    return row


def add_ratios(rows: list[dict]) -> None:
    """Every figure over ``none``'s: prefill over the paired ``none`` runs, the rest over
    the ``none`` row (None where a figure is missing or zero)."""
    none = rows[0]
    for row in rows:
        if row.get("status") != "ok":
            continue
        ratios = {}
        for key in RATIO_KEYS:
            base = row["none_prefill_seconds"] if key == "prefill_seconds" else none[key]
            ok = row[key] is not None and base
            ratios[key] = row[key] / base if ok else None
        row["ratios"] = ratios


def run_speed(subject: Subject, points: list[Point], repeats: int, decode_tokens: int,
              progress=None) -> dict[str, Any]:  # fmt: skip
    """Measure ``points`` (``none`` first, see :func:`plan`); a failing one is reported in
    its row's ``status`` and the others still run. Returns a JSON-ready dict."""
    import transformers

    rows = []
    for point in points[1:]:
        try:
            rows.append(measure_point(subject, point, repeats, decode_tokens))
        except Exception as error:  # e.g. a missing optional backend (faiss)
            status = f"error: {type(error).__name__}: {error}".splitlines()[0][:300]
            rows.append(asdict(point) | {"status": status})
        if progress is not None:
            progress.update(1)
    rows.insert(0, measure_none(subject, rows, repeats, decode_tokens))
    if progress is not None:
        progress.update(1)
    add_ratios(rows)
    device = subject.batch["input_ids"].device
    return {
        "benchmark": "speed",
        "model": subject.description,
        "tokens": int(subject.batch["input_ids"].shape[1]),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "decode_tokens": decode_tokens,
        "peak_memory": PEAK_CUDA if is_cuda(device) else PEAK_CPU,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "rows": rows,
    }


def plot(report: dict[str, Any], path) -> None:
    """Prefill latency ratio and KV-cache ratio vs reduction ratio, one curve per config."""
    from pact.bench.plotting import figure, save

    fig, (latency, cache) = figure(columns=2)
    curves: dict[str, list[dict]] = {}
    for row in report["rows"]:
        if row["status"] == "ok":
            curves.setdefault(row["config"], []).append(row)
    for name, rows in curves.items():
        rows.sort(key=lambda r: r["reduction_ratio"])
        ratios = [r["reduction_ratio"] for r in rows]
        style = dict(marker="s" if name == "none" else "o", label=name)
        latency.plot(ratios, [r["ratios"]["prefill_seconds"] for r in rows], **style)
        cache.plot(ratios, [r["ratios"]["kv_bytes"] for r in rows], **style)
    latency.set(xlabel="reduction ratio (visual tokens removed)", ylabel="prefill latency / none")
    cache.set(xlabel="reduction ratio (visual tokens removed)", ylabel="KV-cache bytes / none")
    fig.suptitle(f"pact bench speed: {report['model']}", fontsize="small")
    save(fig, [latency, cache], path)
