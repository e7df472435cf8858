"""Run the quality benchmark over methods x ratios; its table and plot."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from pact.quality import bench
from pact.quality.model import batch, load
from pact.quality.score import examples

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
    reference = bench.evaluate(model, items, None, batch_size)
    _advance(progress)
    rows = []
    for name in methods:
        for target in ratios:
            setting = bench.choose(model, calibration_batch, name, target, layer, tune_steps)
            result = bench.evaluate(model, items, setting.config(), batch_size)
            rows.append(_row(setting, result, reference["accuracy"]))
            _advance(progress, f"{name} {target:.2f}")
    return {
        "model": str(model_path or "shipped (pact/quality/assets)"),
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


def _row(setting: bench.Setting, result: dict, unreduced: float) -> dict:
    return {
        "method": setting.method,
        "target": setting.target,
        "knob": bench.METHODS[setting.method].knob,
        "value": setting.value,
        "overrides": setting.overrides,
        "accuracy": round(result["accuracy"], 4),
        "relative_accuracy": round(result["accuracy"] / unreduced, 4) if unreduced else None,
        "reduction_ratio": round(result["reduction_ratio"], 4),
        "layer_averaged_ratio": round(result["layer_averaged_ratio"], 4),
        "tries": setting.tries,
    }


def x_value(row: dict) -> float:
    """Where a row sits on the ratio axis: VTW by its layer-averaged ratio (see bench)."""
    key = "layer_averaged_ratio" if row["method"] == "vtw" else "reduction_ratio"
    return row[key]


def format_table(report: dict) -> str:
    """Methods x target ratios: relative accuracy and the measured ratio of each cell."""
    targets = sorted({row["target"] for row in report["rows"]})
    header = ["method", *(f"~{t:.0%} removed" for t in targets)]
    lines = [
        f"unreduced accuracy {report['unreduced_accuracy']:.4f} on {report['examples']} test "
        f"examples; cells: {RELATIVE} (measured reduction ratio)",
        " | ".join(f"{h:>16}" for h in header),
    ]
    for method in dict.fromkeys(row["method"] for row in report["rows"]):
        cells = {row["target"]: row for row in report["rows"] if row["method"] == method}
        text = [_cell(cells[t]) if t in cells else "-" for t in targets]
        lines.append(" | ".join(f"{c:>16}" for c in [method, *text]))
    lines.append("vtw's ratio is layer-averaged (it removes every visual token at one layer)")
    return "\n".join(lines)


def _cell(row: dict) -> str:
    relative = row["relative_accuracy"]  # None when the unreduced model scored 0
    shown = "n/a" if relative is None else f"{relative:.3f}"
    return f"{shown} ({x_value(row):.2f})"


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
