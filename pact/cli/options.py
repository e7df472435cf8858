"""What the commands of ``pact`` share: option parsing, the config they run, and output.

* :func:`split`, :func:`positive_int`, :func:`check_at_least_one`: arguments read once,
  errors naming the option;
* :func:`add_config_options` and :func:`config_from_args`: ``--config`` and ``--set``, turned
  into one :class:`~pact.config.PactConfig` at the command boundary (the command passes that
  object down; nothing below parses a preset or an override again);
* :func:`print_table`: every table a command prints, laid out by rich;
* :func:`progress`, :func:`write_outputs`, :func:`write_json`: progress bars and files.

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pact.config import PactConfig

TABLE_WIDTH = 400
"""Characters a table may take where stdout is no terminal: no table wraps in a log or CI."""
RULE_UNDER_HEADER = "    \n    \n -- \n    \n    \n    \n    \n    \n"
"""rich's box characters for a table without borders: one ASCII rule under the header."""
NUMBER = re.compile(r"[-+]?(\d[\d,./]*|\.\d+)(e[-+]?\d+)?[x%]?|-")
"""A cell that reads as a number (``1.5``, ``2.0x``, ``576,1152``, ``3/4``, or ``-``)."""


def split(text: str, option: str, convert: Callable[[str], Any] = str,
          what: str = "value") -> list:  # fmt: skip
    """Comma-separated values of ``option``; bad ones raise ValueError naming the option
    (``what``: what one value is, for the message)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{option} needs at least one {what}; got {text!r}")
    try:
        return [convert(item) for item in items]
    except ValueError:
        kind = "integer" if convert is int else "numeric"
        raise ValueError(f"{option} takes {kind} values; got {text!r}") from None


def positive_int(text: str) -> int:
    """An argparse type: a positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return int(text)


def check_at_least_one(args: argparse.Namespace, options: tuple[str, ...]) -> None:
    """Each of ``options`` (attribute names) is unset or at least 1, or a ValueError names it."""
    for option in options:
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be at least 1; got {value}")


def refuse_inapplicable(args: argparse.Namespace, kind: str,
                        applies_to: dict[str, tuple[str, ...]]) -> None:  # fmt: skip
    """A ValueError for the first option given (not None) that ``applies_to`` does not
    list for this ``kind`` of ``--model``: an option is never silently ignored."""
    for name, kinds in applies_to.items():
        if getattr(args, name) is not None and kind not in kinds:
            option = "--" + name.replace("_", "-")
            raise ValueError(f"{option} applies to {' and '.join(kinds)} models; --model "
                             f"{args.model!r} is a {kind} model")  # fmt: skip


def check_tiny_family(family: str, option: str = "--model") -> str:
    """``family`` if it names a built-in tiny model, else a ValueError naming ``option``."""
    from pact.hooks.families import families_with

    known = families_with(tiny=True)
    if family not in known:
        raise ValueError(f"{option} must be one of {', '.join(known)}; got {family!r}")
    return family


# ------------------------------------------------------------------ the config
def add_set_option(parser: argparse.ArgumentParser) -> None:
    """``--set PATH=VALUE`` (repeatable): overrides of the config."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override, e.g. stages.0.clusterer.cutoff=0.3 or clusterer.cutoff=0.3 (all "
        "stages); repeatable (default: none)",
    )


def add_config_options(parser: argparse.ArgumentParser, help_extra: str = "") -> None:
    """``--config`` (a preset name or YAML/JSON file) and ``--set``."""
    parser.add_argument(
        "--config",
        default="pact",
        help=f"preset name or YAML/JSON config file{help_extra} (default: %(default)s)",
    )
    add_set_option(parser)


def config_from_args(args: argparse.Namespace, source: str | None = None,
                     source_option: str | None = "--config") -> PactConfig:  # fmt: skip
    """The config a command runs: ``args.config`` (or ``source``) with every ``--set``.

    Errors are ValueErrors that name the option at fault: ``source_option`` for the preset
    or file, ``--set`` and the override for an override, never the file it was applied to.
    """
    from pact.config import PactConfig, source_to_dict
    from pact.errors import ConfigError

    source = args.config if source is None else source
    try:
        data = source_to_dict(source)
        config = PactConfig.validate_dict(data, origin=str(source))
    except ConfigError as error:
        raise ValueError(f"{source_option}: {error}" if source_option else str(error)) from None
    return _with_overrides(data, args.set) if args.set else config


def _with_overrides(data: dict, overrides: Sequence[str]) -> PactConfig:
    """``data`` (a valid config mapping) with ``--set`` ``overrides``, validated together;
    an invalid result is blamed on the override without which it would be valid."""
    from pydantic import ValidationError

    from pact.config import PactConfig, apply_override, format_errors
    from pact.errors import ConfigError

    def applied(items: Sequence[str]) -> dict:
        result = data
        for item in items:
            result = apply_override(result, item)
        return result

    try:
        everything = applied(overrides)
    except ConfigError as error:  # a malformed path or value: apply_override names it
        raise ValueError(f"--set: {error}") from None
    try:
        return PactConfig.model_validate(everything)
    except ValidationError as error:
        culprits = [item for index, item in enumerate(overrides)
                    if _valid(applied([*overrides[:index], *overrides[index + 1 :]]))]  # fmt: skip
        origin = ", ".join(f"override {item!r}" for item in culprits or overrides)
        raise ValueError(f"--set: {format_errors(error, origin, everything)}") from None


def _valid(data: dict) -> bool:
    from pydantic import ValidationError

    from pact.config import PactConfig

    try:
        PactConfig.model_validate(data)
    except ValidationError:
        return False
    return True


def config_label(args: argparse.Namespace) -> str:
    """``--config`` and its ``--set`` overrides as one line, for reports."""
    return " ".join([args.config, *args.set])


# ------------------------------------------------------------------ output
def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], before: Sequence[str] = (),
                after: Sequence[str] = ()) -> None:  # fmt: skip
    """Lines ``before``, the table, lines ``after``, on stdout.

    Columns whose cells all read as numbers are right-aligned. On a terminal rich fits the
    table to its width; elsewhere (a pipe, a log, CI) it is plain text that never wraps,
    cells at least two spaces apart and no trailing blanks, so scripts can split lines.
    """
    from rich.box import Box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    cells = [[str(cell) for cell in row] for row in rows]
    table = Table(box=Box(RULE_UNDER_HEADER), show_edge=False, pad_edge=False, padding=(0, 1))
    for index, name in enumerate(columns):
        numeric = bool(cells) and all(NUMBER.fullmatch(row[index]) for row in cells)
        table.add_column(Text(name), justify="right" if numeric else "left")
    for row in cells:
        table.add_row(*map(Text, row))  # Text: brackets in a cell are no rich markup
    for line in before:
        print(line)
    if sys.stdout.isatty():
        Console(file=sys.stdout).print(table)
    else:
        console = Console(file=sys.stdout, width=TABLE_WIDTH, color_system=None)
        with console.capture() as captured:
            console.print(table, highlight=False)
        print("\n".join(line.rstrip() for line in captured.get().splitlines()))
    for line in after:
        print(line)


def progress(args: argparse.Namespace, total: int, desc: str):
    """A progress bar on stderr, off with --quiet or when stderr is not a terminal."""
    from tqdm import tqdm

    quiet = args.quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=quiet, file=sys.stderr, leave=False)


def write_json(path: str, report: dict) -> None:
    """``report`` as indented JSON (numpy numbers as numbers, anything else as text)."""
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(report, stream, indent=2, default=_plain)
    print(f"wrote {path}")


def _plain(value):
    """JSON for numpy numbers and anything else a report holds (lmms-eval's results)."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_outputs(args: argparse.Namespace, report: dict, plot) -> None:
    """The JSON report (``--json``) and the PNG plot (``--plot``), where asked for."""
    if args.json:
        write_json(args.json, report)
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
