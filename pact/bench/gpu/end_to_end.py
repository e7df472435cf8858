"""The GPU suite's end-to-end section: a shaped random-weight VLM, each method against
``none`` at several batch sizes, each method's knob tuned to one reduction ratio.

Prefill figures come from :func:`pact.bench.prefill.measure_prefill` (runs of ``none`` and
the method alternating, median, CUDA-synchronised); decoding speed from
:func:`pact.bench.speed.decode_rate`; the tuning from :mod:`pact.bench.tuning`.
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

from pact.bench.gpu.gpu_timing import peak_bytes
from pact.bench.prefill import measure_prefill, run_prefill
from pact.bench.speed import decode_rate
from pact.bench.tuning import config_of, tune_method
from pact.config import PactConfig
from pact.hooks import attached
from pact.models.shaped import make_batch
from pact.models.tiny import TinyVLM, build_shaped


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


def tuned_configs(tiny: TinyVLM, batch: dict, settings: Settings) -> dict[str, dict]:
    """For each method, the knob values giving ``target_removal`` on ``batch`` (batch 1)."""
    target, steps = settings.target_removal, settings.calibration_steps
    tuned: dict[str, dict] = {}
    for method in settings.methods:
        with _implementation_for(tiny, method, settings.attn):
            tuned[method] = tune_method(tiny.model, batch, method, target, steps)
    return tuned


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
def _prefill_peak(tiny: TinyVLM, batch: dict, config: PactConfig | None) -> int | None:
    device = batch["input_ids"].device
    with attached(tiny.model, config or PactConfig()):
        return peak_bytes(lambda: run_prefill(tiny.model, batch), device)


def run_method(tiny: TinyVLM, batch: dict, method: str, config: PactConfig, settings) -> dict:
    """Every figure of one method at one batch size, with its paired ``none``."""
    with _implementation_for(tiny, method, settings.attn) as implementation:
        report = measure_prefill(tiny.model, batch, config, settings.repeats)
        row = report.as_dict() | {"config": method, "attn_implementation": implementation}
        row["reduction_overhead"] = report.reduction_seconds / report.none_seconds
        row["removal"] = 1 - report.visual_out / report.visual_in if report.visual_in else 0.0
        row["peak_prefill_bytes"] = _prefill_peak(tiny, batch, config)
        row["decode_tokens_per_s"] = decode_rate(tiny.model, batch, config, settings.decode_tokens)
    return row


def run_none(tiny: TinyVLM, batch: dict, settings: Settings) -> dict:
    """``none`` alone: peak memory and decoding speed (its prefill is paired per method)."""
    return {
        "config": "none",
        "attn_implementation": settings.attn,
        "peak_prefill_bytes": _prefill_peak(tiny, batch, None),
        "decode_tokens_per_s": decode_rate(tiny.model, batch, None, settings.decode_tokens),
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
