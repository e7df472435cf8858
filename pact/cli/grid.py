"""The grid of ``pact sweep``: a YAML file that expands into cells, one ``pact`` command each.

A grid names configs (presets or config files), override axes (each a config path and its
values; the cells take their product) and what each cell runs: lmms-eval tasks through
``pact eval`` (one cell per task) or pact benchmarks through ``pact bench`` (one cell per
benchmark). Every cell writes one JSON file named after it; a cell whose file is there
is done. :func:`collect` reads the files back into one table: the cell's metric and
reduction ratio.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pact.config import PactConfig

BENCH_METRICS = {"fidelity": "top1_steps"}
"""Benchmarks a sweep runs, and the figure each reports as its cell's metric."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalCells(_Strict):
    """Each cell runs ``pact eval`` on one task."""

    model: str
    """Checkpoint (path or hub id) or ``tiny:<family>``, as ``pact eval --model``."""
    tasks: list[str] = Field(min_length=1)
    """lmms-eval task names: one cell per task."""
    include_path: list[str] = []
    """Folders of task YAML files (relative to the grid file)."""
    limit: float | None = None
    """Documents per task (a count, or a fraction below 1)."""
    batch_size: int | Literal["auto"] = 1
    """``pact eval --batch-size``."""
    max_new_tokens: int | None = None
    """Bound on each answer's tokens."""
    device: str | None = None
    """``cpu``, ``cuda`` or ``cuda:N``."""
    options: list[str] = []
    """Further ``pact eval`` arguments, as on its command line (e.g. ``[--dtype, bfloat16]``)."""


class BenchCells(_Strict):
    """Each cell runs one pact benchmark on the cell's config."""

    benchmarks: list[Literal["fidelity"]] = Field(min_length=1)
    """pact benchmarks: one cell per benchmark (``fidelity``: KL, top-1 agreement)."""
    model: str = "llava"
    """The benchmark's tiny model family."""
    options: list[str] = []
    """Further ``pact bench`` arguments, as on its command line."""


class Submit(_Strict):
    """Where cells run when not in this process: submitit's executors."""

    cluster: Literal["slurm", "local", "debug"] = "slurm"
    """``slurm``: one SLURM job per cell; ``local``: one subprocess per cell (testing);
    ``debug``: in this process, through submitit."""
    parameters: dict[str, Any] = {}
    """submitit's ``update_parameters`` (``timeout_min``, ``slurm_partition``,
    ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ...)."""


class Grid(_Strict):
    """A sweep: configs x override values x tasks (or benchmarks)."""

    configs: list[str] = Field(min_length=1)
    """Presets or config files (relative to the grid file)."""
    overrides: dict[str, list[Any]] = {}
    """Override axes: config path -> values; every combination is a cell."""
    eval: EvalCells | None = None
    """lmms-eval tasks through ``pact eval``."""
    bench: BenchCells | None = None
    """pact benchmarks through ``pact bench``."""
    output: str | None = None
    """Folder of the cells' files and the table (default: ``<grid>-sweep`` beside it)."""
    submit: Submit | None = None
    """Run cells through submitit (default: in this process, one after another)."""

    @field_validator("overrides")
    @classmethod
    def _axes_have_values(cls, overrides: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in overrides.items():
            if not values:
                raise ValueError(f"overrides.{path}: give at least one value")
        return overrides

    @model_validator(mode="after")
    def _one_kind_of_cell(self) -> Grid:
        if (self.eval is None) == (self.bench is None):
            raise ValueError("give exactly one of 'eval' (lmms-eval tasks) or 'bench'")
        return self


@dataclass(frozen=True)
class Cell:
    """One run: a config, one value per override axis, and a task or benchmark."""

    config: str
    overrides: tuple[str, ...]
    target: str

    @property
    def name(self) -> str:
        """The cell's file name (no suffix): readable and unique within its grid."""
        parts = [Path(self.config).stem, *self.overrides, self.target]
        return re.sub(r"[^A-Za-z0-9._=-]+", "-", "__".join(parts))


def load_grid(path: str | Path) -> tuple[Grid, Path]:
    """The grid in ``path`` with relative paths resolved, and its output folder."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"GRID: {str(path)!r} is not a file")
    grid = Grid.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    base = path.resolve().parent

    def local(name: str) -> str:
        candidate = base / name
        return str(candidate) if candidate.exists() else name  # a preset name stays

    grid.configs = [local(name) for name in grid.configs]
    if grid.eval is not None:
        grid.eval.include_path = [str(base / folder) for folder in grid.eval.include_path]
    output = base / grid.output if grid.output else base / f"{path.stem}-sweep"
    return grid, output


def cells(grid: Grid) -> list[Cell]:
    """Every cell, each config checked with its overrides (a bad one is named here)."""
    axes = [[f"{path}={value}" for value in values] for path, values in grid.overrides.items()]
    targets = grid.eval.tasks if grid.eval is not None else grid.bench.benchmarks
    found = []
    for config, overrides in product(grid.configs, product(*axes)):
        PactConfig.load(config, overrides)  # ConfigError naming the field, before any run
        found += [Cell(config, tuple(overrides), target) for target in targets]
    names = [cell.name for cell in found]
    if len(set(names)) != len(names):
        raise ValueError("two cells of the grid have the same name: use distinct configs")
    return found


def command(grid: Grid, cell: Cell, folder: Path) -> list[str]:
    """The ``pact`` arguments that run ``cell`` and write ``folder/<cell>.json``."""
    output = str(folder / f"{cell.name}.json")
    if grid.eval is not None:
        spec = grid.eval
        argv = ["eval", "--model", spec.model, "--tasks", cell.target, "--config", cell.config]
        argv += [item for override in cell.overrides for item in ("--set", override)]
        argv += [f"--include-path={folder_}" for folder_ in spec.include_path]
        for option, value in (("--limit", spec.limit), ("--max-new-tokens", spec.max_new_tokens),
                              ("--device", spec.device)):  # fmt: skip
            if value is not None:
                argv += [option, str(value)]
        return [*argv, "--batch-size", str(spec.batch_size), *spec.options, "--output", output]
    # Benchmarks take config files: the cell's config, overrides applied (see prepare).
    config_file = folder / f"{cell.name}.yaml"
    return ["bench", cell.target, "--presets", str(config_file), "--no-reference", "--quiet",
            "--model", grid.bench.model, *grid.bench.options, "--json", output]  # fmt: skip


def prepare(grid: Grid, cell: Cell, folder: Path) -> None:
    """Write what the cell's command reads: a benchmark cell's config file."""
    if grid.bench is not None:
        config = PactConfig.load(cell.config, cell.overrides)
        config.to_yaml(folder / f"{cell.name}.yaml")


def done(cell: Cell, folder: Path) -> bool:
    """Whether the cell's file is there and reads as JSON (a cut-off write does not)."""
    path = folder / f"{cell.name}.json"
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def collect(grid: Grid, found: list[Cell], folder: Path) -> list[dict[str, Any]]:
    """One row per cell: config, overrides, task or benchmark, metric, value, ratio."""
    rows = []
    for cell in found:
        row = {"config": Path(cell.config).stem, "overrides": " ".join(cell.overrides),
               "target": cell.target, "metric": None, "value": None, "reduction_ratio": None,
               "status": "missing"}  # fmt: skip
        if done(cell, folder):
            report = json.loads((folder / f"{cell.name}.json").read_text(encoding="utf-8"))
            row.update(_eval_figures(report, cell.target) if grid.eval else _bench_figures(
                report, cell.target))  # fmt: skip
            row["status"] = "done"
        rows.append(row)
    return rows


def _eval_figures(report: dict, task: str) -> dict[str, Any]:
    metrics = report["results"].get(task, {})
    name = next((key for key in metrics if key != "alias" and "_stderr" not in key), None)
    figures = report["pact"]["tasks"].get(task) or report["pact"]["overall"]
    value = metrics.get(name)
    return {"metric": name, "value": value if isinstance(value, (int, float)) else None,
            "reduction_ratio": figures["reduction_ratio"]}  # fmt: skip


def _bench_figures(report: dict, benchmark: str) -> dict[str, Any]:
    [point] = report["points"]  # one config, no strengths, no reference row
    metric = BENCH_METRICS[benchmark]
    return {"metric": metric, "value": point[metric], "reduction_ratio": point["reduction_ratio"]}
