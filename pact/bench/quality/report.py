"""Run the quality benchmark over methods x ratios; its confidence intervals, comparisons
and plot.

Every accuracy carries a 95% interval over the questions: a Wilson interval for an
accuracy, and a paired bootstrap interval (the same resampled questions for the reduced
and the unreduced answers) for the accuracy relative to the unreduced model. Two methods
are called apart only where their relative-accuracy intervals do not overlap.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pact.bench.quality.methods import METHODS, Setting, choose, evaluate
from pact.models.shapes.model import batch, load
from pact.models.shapes.score import examples, wilson_interval

RELATIVE = "accuracy relative to the unreduced model"
BOOTSTRAP = 2000
"""Resamples of the questions behind each relative-accuracy interval."""


def run_quality(model_path: str | Path | None, methods: list[str], ratios: list[float],
                size: int, layer: int, batch_size: int = 64, calibration: int = 32,
                tune_steps: int = 7, progress=None, overrides=()) -> dict:  # fmt: skip
    """Every method at every target ratio on the first ``size`` test examples; knobs tuned
    on ``calibration`` validation images, with ``overrides`` (``path=value``) applied to
    every method. ``progress`` (tqdm-like) advances per point."""
    started = time.perf_counter()
    model = load(model_path)
    items = examples("test", size)
    calibration_batch = batch(list(examples("val", calibration)))
    reference = evaluate(model, items, None, batch_size)
    unreduced = np.asarray(reference["right"], dtype=float)
    _advance(progress)
    rows = []
    for name in methods:
        for target in ratios:
            setting = choose(
                model, calibration_batch, name, target, layer, tune_steps, tuple(overrides)
            )
            result = evaluate(model, items, setting.config(), batch_size)
            rows.append(_row(setting, result, unreduced))
            _advance(progress, f"{name} {target:.2f}")
    report = {
        "model": str(model_path or "shipped (pact/models/shapes/assets)"),
        "examples": size,
        "layer": layer,
        "overrides": list(overrides),
        "calibration_examples": calibration,
        "unreduced_accuracy": round(unreduced.mean(), 4),
        "unreduced_interval": _rounded(wilson_interval(int(unreduced.sum()), size)),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
    }
    report["comparisons"] = comparisons(report)
    return report


def _advance(progress, description: str | None = None) -> None:
    if progress is not None:
        if description:
            progress.set_description(description)
        progress.update(1)


def _rounded(bounds) -> list[float]:
    return [round(float(bound), 4) for bound in bounds]


def relative_interval(reduced: np.ndarray, unreduced: np.ndarray, resamples: int = BOOTSTRAP,
                      seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """95% paired-bootstrap interval of ``mean(reduced) / mean(unreduced)`` (0/1 arrays over
    the same questions): percentiles 2.5 and 97.5 of the ratio on resampled questions."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(reduced), size=(resamples, len(reduced)))
    denominators = unreduced[picks].mean(axis=1)
    ratios = reduced[picks].mean(axis=1) / np.where(denominators > 0, denominators, np.nan)
    return tuple(np.nanpercentile(ratios, [2.5, 97.5]))


def _row(setting: Setting, result: dict, unreduced: np.ndarray) -> dict:
    right = np.asarray(result["right"], dtype=float)
    share = unreduced.mean()
    return {
        "method": setting.method,
        "target": setting.target,
        "knob": METHODS[setting.method].knob,
        "value": setting.value,
        "overrides": setting.overrides,
        "accuracy": round(right.mean(), 4),
        "accuracy_interval": _rounded(wilson_interval(int(right.sum()), len(right))),
        "relative_accuracy": round(right.mean() / share, 4) if share else None,
        "relative_interval": _rounded(relative_interval(right, unreduced)) if share else None,
        "reduction_ratio": round(result["reduction_ratio"], 4),
        "layer_averaged_ratio": round(result["layer_averaged_ratio"], 4),
        "tries": setting.tries,
    }


def x_value(row: dict) -> float:
    """Where a row sits on the ratio axis: VTW and ToMe by their layer-averaged ratio (see
    :mod:`~pact.bench.quality.methods`), others by the visual tokens they leave."""
    layer_averaged = METHODS[row["method"]].layer_averaged
    return row["layer_averaged_ratio" if layer_averaged else "reduction_ratio"]


def overlap(first: list[float], second: list[float]) -> bool:
    """Whether two intervals share a point."""
    return first[0] <= second[1] and second[0] <= first[1]


ON_TARGET = 0.03
"""How far a row's measured ratio may lie from its target to be compared with the others
at that target (a knob that cannot reach the target is left out, and said so)."""


def comparisons(report: dict) -> list[str]:
    """Per target ratio, among the rows whose measured ratio is within :data:`ON_TARGET`
    of it: the highest relative accuracy, the methods whose intervals overlap its interval
    (not told apart from it), whether pact and random pruning are apart, and the rows left
    out for missing the target."""
    lines = []
    for target in sorted({row["target"] for row in report["rows"]}):
        at_target = [r for r in report["rows"] if r["target"] == target and r["relative_interval"]]
        rows = [r for r in at_target if abs(x_value(r) - target) <= ON_TARGET]
        if not rows:
            continue
        top = max(rows, key=lambda r: r["relative_accuracy"])
        low, high = top["relative_interval"]
        tied = [r["method"] for r in rows
                if r is not top and overlap(r["relative_interval"], top["relative_interval"])]
        text = (f"~{target:.0%} removed: highest {top['method']} {top['relative_accuracy']:.3f} "
                f"[{low:.3f}, {high:.3f}]; not told apart from it: {', '.join(tied) or 'none'}")
        named = {r["method"]: r["relative_interval"] for r in rows}
        if "random" in named and "pact" in named:
            apart = not overlap(named["random"], named["pact"])
            text += f"; pact vs random: {'apart' if apart else 'not told apart'}"
        missed = [f"{r['method']} ({x_value(r):.2f})" for r in at_target if r not in rows]
        if missed:
            text += f"; off target, left out: {', '.join(missed)}"
        lines.append(text)
    return lines


def plot(report: dict, path: str | Path) -> None:
    """Relative accuracy vs measured reduction ratio, one curve per method, with each
    point's 95% interval as an error bar."""
    import matplotlib

    from pact.bench.plotting import figure, save

    fig, axis = figure()
    palette = matplotlib.colormaps["tab20"]  # 18 methods: tab10's colours would repeat
    for index, method in enumerate(dict.fromkeys(row["method"] for row in report["rows"])):
        rows = sorted((r for r in report["rows"] if r["method"] == method), key=x_value)
        xs = [0.0, *(x_value(r) for r in rows)]
        ys = [1.0, *(r["relative_accuracy"] or 0.0 for r in rows)]
        bounds = [r["relative_interval"] or [y, y] for y, r in zip(ys[1:], rows, strict=True)]
        low = [0.0, *(y - b[0] for y, b in zip(ys[1:], bounds, strict=True))]
        high = [0.0, *(b[1] - y for y, b in zip(ys[1:], bounds, strict=True))]
        label = method + (" (layer-averaged)" if METHODS[method].layer_averaged else "")
        style = (dict(linewidth=2.5, color="black", marker="o") if method == "pact" else
                 dict(linewidth=1.2, color=palette(index % 20), marker="osD^v<>pP*Xh"[index % 11]))
        axis.errorbar(xs, ys, yerr=[low, high], markersize=4, capsize=2, label=label,
                      **style)  # fmt: skip
    axis.set_xlabel("reduction ratio (visual tokens removed)")
    axis.set_ylabel(RELATIVE)
    axis.set_title(f"pact bench quality ({report['examples']} test questions, 95% intervals)")
    save(fig, axis, path)
