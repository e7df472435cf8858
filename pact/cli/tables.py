"""What ``pact bench`` prints: each benchmark's report (a JSON-ready dict) as one table.

Every figure has its own column and every table goes through
:func:`pact.cli.options.print_table`, so no two figures ever run into each other.
"""

from __future__ import annotations

from typing import Any

from pact.cli.options import print_table


def _fixed(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _kl(value: float | None) -> str:
    # Scientific: on random weights KL is often 1e-5 or below, which fixed digits hide.
    return "-" if value is None else ("0" if value == 0 else f"{value:.1e}")


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def clusterers(report: dict[str, Any]) -> None:
    """One row per device and clusterer; a cell is ``seconds/clusters/max distance``."""
    from pact.bench.clusterers import SKIPPED

    def cell(row: dict | None) -> str:
        if row is None:
            return "-"
        if row["status"] != "ok":
            return "skipped" if row["status"] == SKIPPED else "error"
        return f"{row['seconds']:.4f}s/{row['clusters']}/{row['max_distance']:.3f}"

    sizes = report["sizes"]
    by_key: dict[tuple[str, str], dict[int, dict]] = {}
    for row in report["rows"]:
        by_key.setdefault((row["device"], row["clusterer"]), {})[row["n"]] = row
    rows = [(device, name, *(cell(cells.get(n)) for n in sizes))
            for (device, name), cells in by_key.items()]  # fmt: skip
    before = [
        f"keys: {report['keys']}; {report['threads']} torch threads",
        f"settings: {report['settings_note']}",
        "cell: median seconds / clusters made / largest member-to-center cosine distance",
    ]
    after = []
    if any(row["status"] == SKIPPED for row in report["rows"]):
        after.append(f"skipped: a call at a smaller n took over {report['budget_seconds']} s")
    errors = [f"  {row['device']} {row['clusterer']} n={row['n']}: {row['status']}"
              for row in report["rows"] if row["status"].startswith("error")]  # fmt: skip
    after += ["errors:", *errors] if errors else []
    print_table(("device", "clusterer", *(f"n={n}" for n in sizes)), rows, before, after)


def fidelity(report: dict[str, Any]) -> None:
    """One row per point: knob value, ratios, KL, top-1 agreement, exact match."""
    columns = ("preset", "knob", "ratio", "layer-avg", "KL last", "KL steps", "top1 last",
               "top1 steps", "exact")  # fmt: skip
    rows, errors = [], []
    for p in report["points"]:
        knob = "(as preset)" if p["knob"] is None else f"{p['knob']}={p['value']}"
        if p["status"] != "ok":
            rows.append((p["preset"], knob, *["-"] * 7))
            errors.append(f"  {p['preset']} {knob}: {p['status']}")
            continue
        rows.append((
            p["preset"], knob, _fixed(p["reduction_ratio"], 2),
            _fixed(p["layer_averaged_ratio"], 2), _kl(p["kl_last"]), _kl(p["kl_steps"]),
            _fixed(p["top1_last"], 2), _fixed(p["top1_steps"], 2), _fixed(p["exact_match"], 2),
        ))  # fmt: skip
    before = [
        f"model: {report['model']}, batch of {len(report['rows'])}, "
        f"{report['new_tokens']} greedy tokens",
        f"NOTE: {report['note']}",
    ]
    after = ["ratio: visual tokens removed at the prefill (handle.stats); layer-avg: "
             "visual token-layers removed, averaged over the decoder"]  # fmt: skip
    print_table(columns, rows, before, after + (["errors:", *errors] if errors else []))


def speed(report: dict[str, Any]) -> None:
    """One row per configuration: figures, each next to its ratio to ``none`` (x)."""
    columns = ("config", "setting", "kept", "removed", "prefill s", "x", "decode t/s", "x",
               "peak MiB", "x", "KV MiB", "x", "score s", "cluster s", "merge s")  # fmt: skip
    rows, errors = [], []
    for r in report["rows"]:
        setting = ",".join(r["overrides"]) or "(as given)"
        if r["status"] != "ok":
            rows.append((r["config"], setting, *["-"] * (len(columns) - 2)))
            errors.append(f"  {r['config']} {setting}: {r['status']}")
            continue
        q, s = r["ratios"], r["seconds"]
        rows.append((
            r["config"], setting, r["visual_kept"], f"{r['reduction_ratio']:.2f}",
            f"{r['prefill_seconds']:.3f}", _times(q["prefill_seconds"]),
            f"{r['decode_tokens_per_s']:.1f}", _times(q["decode_tokens_per_s"]),
            _mib(r["peak_bytes"]), _times(q["peak_bytes"]), _mib(r["kv_bytes"]),
            _times(q["kv_bytes"]), f"{s['score']:.3f}", f"{s['cluster']:.3f}",
            f"{s['merge']:.3f}",
        ))  # fmt: skip
    before = [
        f"model: {report['model']}, {report['tokens']} tokens, {report['device']}, "
        f"{report['threads']} threads, prefill median of {report['repeats']}, "
        f"{report['decode_tokens']} decode steps",
        f"peak memory: {report['peak_memory']}",
    ]
    after = ["x: ratio to none (prefill: to the none runs interleaved with that row)"]
    print_table(columns, rows, before, after + (["errors:", *errors] if errors else []))


def quality(report: dict[str, Any]) -> None:
    """Methods x target ratios: relative accuracy, its 95% interval and the measured ratio
    of each cell; then which methods the intervals tell apart."""
    from pact.bench.quality.methods import METHODS
    from pact.bench.quality.report import RELATIVE, x_value

    def cell(row: dict | None) -> str:
        if row is None:
            return "-"
        if row["relative_accuracy"] is None:  # the unreduced model scored 0
            return f"n/a ({x_value(row):.2f})"
        low, high = row["relative_interval"]
        return f"{row['relative_accuracy']:.3f} [{low:.3f},{high:.3f}] ({x_value(row):.2f})"

    targets = sorted({row["target"] for row in report["rows"]})
    rows = []
    for method in dict.fromkeys(row["method"] for row in report["rows"]):
        cells = {row["target"]: row for row in report["rows"] if row["method"] == method}
        rows.append((method, *(cell(cells.get(target)) for target in targets)))
    low, high = report["unreduced_interval"]
    before = [f"unreduced accuracy {report['unreduced_accuracy']:.4f} [{low:.4f}, {high:.4f}] on "
              f"{report['examples']} test examples; cells: {RELATIVE} [95% interval] "
              "(measured reduction ratio)"]  # fmt: skip
    averaged = [m for m, *_ in rows if METHODS[m].layer_averaged]
    after = [*([f"{' and '.join(averaged)}: ratios layer-averaged (removal differs by layer)"]
               if averaged else []),
             *report["comparisons"], f"{report['seconds']} s on {report['threads']} threads"]
    print_table(("method", *(f"~{t:.0%} removed" for t in targets)), rows, before, after)
