"""The ``pact`` command line: one module per command group.

:mod:`~pact.cli.configs` (``presets``, ``config``, ``components``), :mod:`~pact.cli.run`,
:mod:`~pact.cli.viz`, :mod:`~pact.cli.bench`, :mod:`~pact.cli.eval` and
:mod:`~pact.cli.sweep`; what they share is
:mod:`~pact.cli.options`. Building the parser imports neither torch nor transformers: a
command imports what it runs when it runs, so ``pact --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pact.cli import bench, configs, run, sweep, viz
from pact.cli import eval as evaluate
from pact.errors import ConfigError, UnknownNameError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless it has none or says it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or "default:" in text or default is None or default is False:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argument parser (and, through ``add_subparsers``, its subcommands') whose help
    texts state the defaults."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``pact`` parser with every command; ``run`` of the parsed namespace runs it."""
    parser = Parser(prog="pact", description="Training-free visual token reduction (PACT).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    configs.add_config_commands(commands)
    run.add_run(commands)
    configs.add_components_command(commands)
    viz.add_viz(commands)
    bench.add_bench(commands)
    evaluate.add_eval(commands)
    sweep.add_sweep(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pact`` with ``argv`` (default: the process's); 2 on a bad argument or config."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, UnknownNameError, ValueError) as error:
        print(f"pact {args.command}: {error}", file=sys.stderr)
        return 2
