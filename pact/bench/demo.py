"""``pact run``: reduce and generate on a built-in tiny VLM, side by side with no reduction."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from pact.bench.tiny import FAMILIES, TinyVLM, build
from pact.config import PactConfig
from pact.hooks import attached

DEMO_ROWS = (
    ["text:6", "image", "text:8"],
    ["text:3", "image", "text:5", "image", "text:4"],
)
"""Two rows of different lengths and image counts (left-padded into one batch)."""


@dataclass
class RunResult:
    """One configuration's figures on the demo batch."""

    name: str
    prefill_ms: float
    tokens: list[list[int]]
    stats: dict[str, Any]


def _median_prefill_ms(tiny: TinyVLM, batch: dict, repeats: int) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            tiny.model(**batch)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_config(tiny: TinyVLM, batch: dict, config: PactConfig, name: str, new_tokens: int,
               repeats: int) -> RunResult:  # fmt: skip
    """Prefill timing, greedy generation and stats of ``config`` on ``batch``."""
    with attached(tiny.model, config) as handle:
        prefill_ms = _median_prefill_ms(tiny, batch, repeats)
        handle.stats.reset()
        with torch.no_grad():
            output = tiny.model.generate(**batch, max_new_tokens=new_tokens, do_sample=False)
        new = output[:, batch["input_ids"].shape[1] :].tolist()
        return RunResult(name, prefill_ms, new, handle.stats.summary())


def run_demo(
    family: str = "llava",
    text: str = "qwen2",
    config: Any = "pact",
    overrides: tuple[str, ...] = (),
    new_tokens: int = 8,
    repeats: int = 3,
    seed: int = 0,
) -> tuple[RunResult, RunResult]:
    """``none`` and ``config`` on the same tiny model and batch."""
    if family not in FAMILIES:
        raise ValueError(f"--model must be one of {', '.join(FAMILIES)}; got {family!r}")
    pact_config = PactConfig.load(config, overrides)
    tiny = build(family, text=text, seed=seed)
    rows = [list(row) for row in DEMO_ROWS]
    if tiny.video_token_id is not None:
        rows[1] = ["text:3", "video", "text:5"]
    batch = tiny.inputs(rows, padding_side="left", seed=seed)
    baseline = run_config(tiny, batch, PactConfig(), "none", new_tokens, repeats)
    reduced = run_config(tiny, batch, pact_config, str(config), new_tokens, repeats)
    return baseline, reduced


def format_report(family: str, text: str, baseline: RunResult, reduced: RunResult) -> str:
    """A small table: prefill time, visual tokens kept, ratio, step seconds, tokens."""
    last = reduced.stats["last_call"]
    seconds = last["seconds"]
    same = sum(a == b for a, b in zip(baseline.tokens, reduced.tokens, strict=True))
    lines = [
        f"model: tiny random-weight {family} ({text} decoder), batch of {len(baseline.tokens)}",
        f"{'':28s}{'none':>12s}{reduced.name:>12s}",
        f"{'prefill ms (median)':28s}{baseline.prefill_ms:12.1f}{reduced.prefill_ms:12.1f}",
        f"{'visual tokens per row':28s}{_fmt(last['visual_in']):>12s}"
        f"{_fmt(last['visual_out']):>12s}",
        f"{'reduction ratio':28s}{0.0:12.2f}{last['reduction_ratio']:12.2f}",
        f"{'score/cluster/merge ms':28s}{'-':>12s}"
        f"{'/'.join(f'{seconds[k] * 1000:.1f}' for k in ('score', 'cluster', 'merge')):>12s}",
        f"greedy tokens, none: {baseline.tokens}",
        f"greedy tokens, {reduced.name}: {reduced.tokens}",
        f"rows with identical greedy output: {same}/{len(baseline.tokens)} "
        "(random weights: a plumbing check, not a quality measure)",
    ]
    return "\n".join(lines)


def _fmt(values: list[int]) -> str:
    return ",".join(str(v) for v in values) or "-"
