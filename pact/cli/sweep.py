"""``pact sweep GRID.yaml``: run every cell of an ablation grid, then one table and plot.

The grid (:mod:`pact.cli.grid`) expands into cells, each one ``pact eval`` or ``pact
bench`` command writing its JSON file. Cells already done are skipped, so an interrupted
or extended sweep resumes where it stopped. Cells run here one after another, or each as
a job through submitit (a SLURM cluster; ``cluster: local`` runs them as subprocesses).
Then every cell's metric and reduction ratio are collected into ``sweep.csv``,
``sweep.json`` and ``sweep.png`` in the grid's output folder, and printed.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from pact.backends import require
from pact.cli.grid import Cell, Grid, cells, collect, command, done, load_grid, prepare
from pact.cli.options import print_table, write_json

DESCRIPTION = (
    "Expand GRID.yaml (configs x override values x lmms-eval tasks or pact benchmarks) into "
    "cells, run those not done yet (here, one after another, or one submitit job each), "
    "then print and write one table and plot of every cell's metric and reduction ratio."
)


def add_sweep(commands) -> None:
    """Add ``pact sweep`` to the top-level ``commands``."""
    parser = commands.add_parser(
        "sweep", help="an ablation grid: run its cells (locally or on SLURM), one table",
        description=DESCRIPTION,
    )  # fmt: skip
    parser.add_argument("grid", metavar="GRID.yaml", help="the grid file (docs/ablation.md)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the cells and their commands; run nothing (default: run them)",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="with submit: return once the jobs are submitted, and run again to collect "
        "(default: wait for the jobs, then collect)",
    )
    parser.set_defaults(run=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    """Check the whole grid, run the cells not done, collect; 1 if a cell failed."""
    grid, folder = load_grid(args.grid)
    found = cells(grid)  # every config and override checked before anything runs
    if grid.submit is not None:
        try:
            require("submitit", "the grid's submit")
        except ImportError as error:
            raise ValueError(str(error)) from None
    if args.dry_run:
        for cell in found:
            state = "done" if done(cell, folder) else "to run"
            print(f"{cell.name}  [{state}]  pact {' '.join(command(grid, cell, folder))}")
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    todo = [cell for cell in found if not done(cell, folder)]
    for cell in todo:
        prepare(grid, cell, folder)
    print(f"{len(found)} cells, {len(found) - len(todo)} done, {len(todo)} to run")
    if grid.submit is not None:
        failed = _submit(grid, todo, folder, wait=not args.no_wait)
        if args.no_wait:
            return 0
    else:
        failed = [cell.name for cell in todo if _run_here(grid, cell, folder) != 0]
    _report(grid, found, folder)
    if failed:
        print(f"failed cells: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def run_cell(argv: list[str]) -> int:
    """One cell's ``pact`` command (what a submitted job runs); raises if it fails."""
    from pact.cli import main

    code = main(argv)
    if code != 0:
        raise RuntimeError(f"pact {' '.join(argv)} exited with {code}")
    return code


def _run_here(grid: Grid, cell: Cell, folder: Path) -> int:
    from pact.cli import main

    print(f"-- {cell.name}")
    return main(command(grid, cell, folder))


def _submit(grid: Grid, todo: list[Cell], folder: Path, wait: bool) -> list[str]:
    """One submitit job per cell; the names of those that failed (when waited for)."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder / "submitit", cluster=grid.submit.cluster)
    executor.update_parameters(name="pact-sweep", **grid.submit.parameters)
    jobs = [(cell, executor.submit(run_cell, command(grid, cell, folder))) for cell in todo]
    for cell, job in jobs:
        print(f"submitted {cell.name}: job {job.job_id}")
    if not wait:
        return []
    failed = []
    for cell, job in jobs:
        try:
            job.result()
        except Exception as error:  # one failed cell is reported; the others still count
            print(f"{cell.name}: {type(error).__name__}: {error}"[:400], file=sys.stderr)
            failed.append(cell.name)
    return failed


def _report(grid: Grid, found: list[Cell], folder: Path) -> None:
    """The table on stdout; ``sweep.csv``, ``sweep.json`` and ``sweep.png`` in ``folder``."""
    rows = collect(grid, found, folder)
    columns = ("config", "overrides", "target", "metric", "value", "reduction_ratio", "status")
    shown = [[_cell(row[name]) for name in columns] for row in rows]
    print_table(columns, shown, after=[f"cells' files: {folder}"])
    with (folder / "sweep.csv").open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    write_json(str(folder / "sweep.json"), {"cells": rows})
    _plot(rows, folder / "sweep.png")


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _plot(rows: list[dict], path: Path) -> None:
    """Metric against reduction ratio, one line per config and task (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in rows:
        if row["value"] is not None and row["reduction_ratio"] is not None:
            key = (row["config"], f"{row['target']} {row['metric']}")
            series.setdefault(key, []).append((row["reduction_ratio"], row["value"]))
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for (config, target), points in sorted(series.items()):
        axis.plot(*zip(*sorted(points), strict=True), marker="o", label=f"{config}: {target}")
    axis.set_xlabel("reduction ratio (visual tokens removed)")
    axis.set_ylabel("metric")
    if series:
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"wrote {path}")
