"""Run the quality benchmark over methods x ratios; its plot."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from pact.bench.quality.methods import METHODS, Setting, choose, evaluate
from pact.models.shapes.model import batch, load
from pact.models.shapes.score import examples

RELATIVE = "accuracy relative to the unreduced model"


def run_quality(model_path: str | Path | None, methods: list[str], ratios: list[float],
                size: int, layer: int, batch_size: int = 64, calibration: int = 32,
                tune_steps: int = 7, progress=None) -> dict:  # fmt: skip
    """Every method at every target ratio on the first ``size`` test examples.

    ``progress`` (a tqdm-like bar) is advanced once per evaluated point.
    """
    started = time.perf_counter()
    model = load(model_path)
    items = examples("test", size)
    calibration_batch = batch(list(examples("test", min(calibration, size))))
    reference = evaluate(model, items, None, batch_size)
    _advance(progress)
    rows = []
    for name in methods:
        for target in ratios:
            setting = choose(model, calibration_batch, name, target, layer, tune_steps)
            result = evaluate(model, items, setting.config(), batch_size)
            rows.append(_row(setting, result, reference["accuracy"]))
            _advance(progress, f"{name} {target:.2f}")
    return {
        "model": str(model_path or "shipped (pact/models/shapes/assets)"),
        "examples": size,
        "layer": layer,
        "calibration_examples": min(calibration, size),
        "unreduced_accuracy": round(reference["accuracy"], 4),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
    }


def _advance(progress, description: str | None = None) -> None:
    if progress is not None:
        if description:
            progress.set_description(description)
        progress.update(1)


def _row(setting: Setting, result: dict, unreduced: float) -> dict:
    return {
        "method": setting.method,
        "target": setting.target,
        "knob": METHODS[setting.method].knob,
        "value": setting.value,
        "overrides": setting.overrides,
        "accuracy": round(result["accuracy"], 4),
        "relative_accuracy": round(result["accuracy"] / unreduced, 4) if unreduced else None,
        "reduction_ratio": round(result["reduction_ratio"], 4),
        "layer_averaged_ratio": round(result["layer_averaged_ratio"], 4),
        "tries": setting.tries,
    }


def x_value(row: dict) -> float:
    """Where a row sits on the ratio axis: VTW by its layer-averaged ratio (see methods)."""
    key = "layer_averaged_ratio" if row["method"] == "vtw" else "reduction_ratio"
    return row[key]


def plot(report: dict, path: str | Path) -> None:
    """Relative accuracy vs measured reduction ratio, one curve per method."""
    from pact.bench.plotting import figure, save

    fig, axis = figure()
    for method in dict.fromkeys(row["method"] for row in report["rows"]):
        rows = sorted((r for r in report["rows"] if r["method"] == method), key=x_value)
        xs = [0.0, *(x_value(r) for r in rows)]
        ys = [1.0, *(r["relative_accuracy"] or 0.0 for r in rows)]
        label = method + (" (layer-averaged)" if method == "vtw" else "")
        style = dict(linewidth=2.5, color="black") if method == "pact" else dict(linewidth=1.2)
        axis.plot(xs, ys, marker="o", markersize=3, label=label, **style)
    axis.set_xlabel("reduction ratio (visual tokens removed)")
    axis.set_ylabel(RELATIVE)
    axis.set_title(f"pact bench quality ({report['examples']} test questions)")
    save(fig, axis, path)
