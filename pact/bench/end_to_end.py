"""End to end on a shaped random-weight VLM: prefill, decoding, memory and KV cache of each
method against ``none``, with each method's parameters tuned to one reduction ratio.

Prefill figures come from :func:`pact.bench.prefill.measure_prefill` (runs of ``none`` and
the method alternating, median, CUDA-synchronised); decoding speed from the time between
the first and the last generated token's logits of a greedy ``generate``.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from pact.bench.gpu_timing import peak_bytes, synchronize
from pact.bench.prefill import _prefill, measure_prefill
from pact.bench.tiny import TinyVLM, build_shaped
from pact.config import PactConfig
from pact.hooks import attached

PROMPT = ("text:12", "image", "text:24")
"""One image between a short system-like prefix and a short question."""
TOME_STAGES = 8  # the tome preset: one stage per layer 0..7


@dataclass
class Settings:
    """What the end-to-end section runs; defaults are the GPU run's."""

    shape: dict[str, int]
    image_tokens: int
    dtype: torch.dtype
    device: str
    attn: str
    batch_sizes: tuple[int, ...] = (1, 4)
    methods: tuple[str, ...] = ("pact", "fastv", "tome")
    repeats: int = 5
    decode_tokens: int = 32
    target_removal: float = 0.70
    calibration_steps: int = 7
    deadline: float = math.inf
    """``time.monotonic()`` after which remaining runs are skipped (and said so)."""
    seed: int = 0
    notes: list[str] = field(default_factory=list)


def build_model(settings: Settings) -> TinyVLM:
    return build_shaped(
        settings.shape,
        "llava_onevision",
        image_tokens=settings.image_tokens,
        dtype=settings.dtype,
        attn=settings.attn,
        device=settings.device,
        seed=settings.seed,
    )


def make_batch(tiny: TinyVLM, batch_size: int, seed: int = 0) -> dict:
    """``batch_size`` rows of the same layout (no padding), each with its own image."""
    return tiny.inputs([list(PROMPT)] * batch_size, seed=seed)


# ------------------------------------------------------------------ configs and tuning
def method_config(method: str, value: float, cutoff: float | None = None) -> PactConfig:
    """The preset of ``method`` with its one tuned parameter set to ``value``."""
    if method == "pact":
        overrides = [f"keep_ratio={value}"]
        if cutoff is not None:
            overrides.append(f"clusterer.cutoff={cutoff}")
        return PactConfig.load("pact", overrides)
    if method == "fastv":
        return PactConfig.load("fastv", [f"keep_ratio={value}"])
    if method == "tome":
        return PactConfig.load("tome", [f"clusterer.merge_ratio={value}"])
    raise ValueError(f"method must be pact, fastv or tome; got {method!r}")


def removal(tiny: TinyVLM, batch: dict, config: PactConfig) -> float:
    """Fraction of visual tokens the reduction removes on ``batch`` (one prefill)."""
    with attached(tiny.model, config) as handle, torch.no_grad():
        tiny.model(**batch, logits_to_keep=1)
        return handle.stats.last_reduction_ratio


def tune(measure: Callable[[float], float], guess: float, bounds, target: float, steps: int,
         increasing: bool) -> tuple[float, float, list]:  # fmt: skip
    """The parameter whose removal is nearest ``target`` (removal monotone in it).

    Starts at ``guess``; then interpolates between the last two tries when that stays
    inside the bracket the tries have narrowed, and bisects the bracket otherwise.
    """
    low, high = bounds
    value, tries = guess, []
    for _ in range(max(1, steps)):
        got = measure(value)
        tries.append([round(value, 5), round(got, 5)])
        if abs(got - target) <= 0.01:
            break
        if (got < target) == increasing:
            low = value
        else:
            high = value
        value = (low + high) / 2
        if len(tries) >= 2:
            (v0, r0), (v1, r1) = tries[-2], tries[-1]
            if r1 != r0:
                secant = v1 + (target - r1) * (v1 - v0) / (r1 - r0)
                value = secant if low < secant < high else value
    best = min(tries, key=lambda pair: abs(pair[1] - target))
    return best[0], best[1], tries


def tuned_configs(tiny: TinyVLM, batch: dict, settings: Settings) -> dict[str, dict]:
    """For each method, the parameter giving ``target_removal`` on ``batch`` (batch 1)."""
    target, steps = settings.target_removal, settings.calibration_steps
    tuned: dict[str, dict] = {}
    for method in settings.methods:
        with _implementation_for(tiny, method, settings.attn):
            tuned[method] = _tune_method(tiny, batch, method, target, steps)
    return tuned


def _tune_method(tiny: TinyVLM, batch: dict, method: str, target: float, steps: int) -> dict:
    def measure(make: Callable[[float], PactConfig]) -> Callable[[float], float]:
        return lambda value: removal(tiny, batch, make(value))

    if method == "fastv":  # floor(keep * n) tokens stay: the ratio is exact
        keep = round(1.0 - target, 6)
        got = measure(lambda v: method_config("fastv", v))(keep)
        return {"keep_ratio": keep, "removal": got, "tries": [[keep, got]]}
    if method == "tome":  # r = floor(m * n) per stage: about (1 - m)^8 stays
        guess = round(1.0 - (1.0 - target) ** (1.0 / TOME_STAGES), 6)
        make = lambda v: method_config("tome", v)  # noqa: E731
        value, got, tries = tune(measure(make), guess, (0.0, 0.5), target, steps, True)
        return {"merge_ratio": value, "removal": got, "tries": tries}
    make = lambda v: method_config("pact", v)  # noqa: E731
    value, got, tries = tune(
        measure(make), round(1.0 - target, 6), (0.02, 1.0), target, steps, False
    )
    result = {"keep_ratio": value, "cutoff": 0.21, "removal": got, "tries": tries}
    if got > target + 0.02:
        # DBDPC alone merges past the target on these keys: keep EUTI's 0.55, lower the cutoff.
        make = lambda v: method_config("pact", 0.55, cutoff=v)  # noqa: E731
        cut, got, more = tune(measure(make), 0.105, (0.0, 0.21), target, steps, True)
        result = {"keep_ratio": 0.55, "cutoff": cut, "removal": got, "tries": tries + more}
    return result


def untuned(settings: Settings) -> dict[str, dict]:
    """Parameters from the token arithmetic alone (used if tuning fails)."""
    keep = round(1.0 - settings.target_removal, 6)
    guesses = {
        "pact": {"keep_ratio": keep, "cutoff": 0.21},
        "fastv": {"keep_ratio": keep},
        "tome": {"merge_ratio": round(1.0 - keep ** (1.0 / TOME_STAGES), 6)},
    }
    return {method: guesses[method] | {"untuned": True} for method in settings.methods}


def config_of(method: str, tuned: dict) -> PactConfig:
    if method == "pact":
        return method_config("pact", tuned["keep_ratio"], tuned.get("cutoff"))
    if method == "fastv":
        return method_config("fastv", tuned["keep_ratio"])
    return method_config("tome", tuned["merge_ratio"])


@contextmanager
def _implementation_for(tiny: TinyVLM, method: str, attn: str):
    """FastV reads attention scores, which flash kernels never form: run it (and its paired
    ``none``) under sdpa on the same weights, then switch back."""
    switch = method == "fastv" and "flash" in attn
    if switch:
        tiny.model.set_attn_implementation("sdpa")
    try:
        yield "sdpa" if switch else attn
    finally:
        if switch:
            tiny.model.set_attn_implementation(attn)


# ------------------------------------------------------------------ one run
class _StepClock(LogitsProcessor):
    """Host time (after a device synchronisation) at each generated token's logits."""

    def __init__(self, device):
        self.device, self.times = device, []

    def __call__(self, input_ids, scores):
        synchronize(self.device)
        self.times.append(time.perf_counter())
        return scores


def decode_rate(tiny: TinyVLM, batch: dict, config: PactConfig | None, tokens: int) -> float:
    """Generated tokens per second over ``tokens`` decoding steps (all rows together)."""
    clock = _StepClock(batch["input_ids"].device)
    options = dict(max_new_tokens=tokens + 1, min_new_tokens=tokens + 1, do_sample=False)
    with attached(tiny.model, config or PactConfig()), torch.no_grad():
        tiny.model.generate(**batch, logits_processor=LogitsProcessorList([clock]), **options)
    return batch["input_ids"].shape[0] * tokens / (clock.times[-1] - clock.times[0])


def _prefill_peak(tiny: TinyVLM, batch: dict, config: PactConfig | None) -> int | None:
    device = batch["input_ids"].device
    with attached(tiny.model, config or PactConfig()):
        return peak_bytes(lambda: _prefill(tiny.model, batch), device)


def run_method(tiny: TinyVLM, batch: dict, method: str, config: PactConfig, settings) -> dict:
    """Every figure of one method at one batch size, with its paired ``none``."""
    with _implementation_for(tiny, method, settings.attn) as implementation:
        report = measure_prefill(tiny.model, batch, config, settings.repeats)
        row = report.as_dict() | {"config": method, "attn_implementation": implementation}
        row["reduction_overhead"] = report.reduction_seconds / report.none_seconds
        row["removal"] = 1 - report.visual_out / report.visual_in if report.visual_in else 0.0
        row["peak_prefill_bytes"] = _prefill_peak(tiny, batch, config)
        row["decode_tokens_per_s"] = decode_rate(tiny, batch, config, settings.decode_tokens)
    return row


def run_none(tiny: TinyVLM, batch: dict, settings: Settings) -> dict:
    """``none`` alone: peak memory and decoding speed (its prefill is paired per method)."""
    return {
        "config": "none",
        "attn_implementation": settings.attn,
        "peak_prefill_bytes": _prefill_peak(tiny, batch, None),
        "decode_tokens_per_s": decode_rate(tiny, batch, None, settings.decode_tokens),
    }


def end_to_end(
    tiny: TinyVLM, settings: Settings, tuned: dict, record: Callable[[dict], None]
) -> dict:
    """``none`` and each method (parameters ``tuned``, see :func:`tuned_configs`) at each
    batch size. ``record(result)`` is called after every run, so a run cut off by a time
    limit keeps what it measured; runs past ``settings.deadline`` are listed as skipped.
    """
    result: dict[str, Any] = {"tuned": tuned, "rows": [], "skipped": []}
    for batch_size in settings.batch_sizes:
        batch = make_batch(tiny, batch_size, settings.seed)
        for method in ("none", *settings.methods):
            if time.monotonic() > settings.deadline:
                result["skipped"].append({"batch": batch_size, "config": method})
                continue
            try:
                if method == "none":
                    row = run_none(tiny, batch, settings)
                else:
                    config = config_of(method, result["tuned"][method])
                    row = run_method(tiny, batch, method, config, settings)
            except Exception:  # e.g. out of memory: keep the other runs
                row = {"config": method, "error": traceback.format_exc()}
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            result["rows"].append(row | {"batch": batch_size})
            record(result)
        _fill_none_prefill(result["rows"], batch_size)
    return result


def _fill_none_prefill(rows: list[dict], batch_size: int) -> None:
    """The ``none`` row's prefill (median of the ``none`` runs paired with each method) and
    KV-cache bytes."""
    paired = [r for r in rows if r["batch"] == batch_size and "none_seconds" in r]
    for row in rows:
        if row["batch"] == batch_size and row["config"] == "none" and paired:
            row["prefill_seconds"] = statistics.median(r["none_seconds"] for r in paired)
            row["kv_bytes_none"] = paired[0]["kv_bytes_none"]
