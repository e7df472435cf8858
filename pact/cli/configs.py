"""``pact presets``, ``pact config`` and ``pact components``: configs and components, no model.

These commands import neither torch nor transformers, so they answer at once.
"""

from __future__ import annotations

import argparse
import re

from pact.cli.options import add_set_option, config_from_args, print_table

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
"""Where a sentence ends: a stop, blanks, then a capital letter."""


def add_config_commands(commands) -> None:
    """Add ``presets`` and ``config`` to the top-level ``commands``."""
    presets = commands.add_parser(
        "presets",
        help="list the official presets, each with the first sentence of its description",
        description="The official presets; `pact presets --show NAME` prints one in full.",
    )
    presets.add_argument(
        "--show", metavar="NAME", help="print one preset's YAML file (default: list every preset)"
    )
    presets.set_defaults(run=run_presets)

    config = commands.add_parser(
        "config",
        help="validate a config, apply overrides and print it in full",
        description="Validate a preset or config file with its --set overrides and print "
        "every setting, defaults included (reloading the output gives the same config).",
    )
    config.add_argument("source", help="preset name, or path to a YAML/JSON config")
    add_set_option(config)
    config.set_defaults(run=run_config)


def add_components_command(commands) -> None:
    """Add ``components`` to the top-level ``commands``."""
    components = commands.add_parser(
        "components",
        help="list the registered scorers, clusterers and mergers (plugins included)",
        description="Every registered component with the first paragraph of its docstring.",
    )
    components.set_defaults(run=run_components)


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (all of it when it holds one)."""
    return SENTENCE_END.split(text, maxsplit=1)[0]


def run_presets(args: argparse.Namespace) -> int:
    from pact.presets import list_presets, preset_description, preset_text
    from pact.reference import summary

    if args.show:
        print(preset_text(args.show), end="")
        return 0
    rows = [
        (name, first_sentence(summary(preset_description(name), code="")))
        for name in list_presets()
    ]
    print_table(("preset", "description"), rows)
    return 0


def run_config(args: argparse.Namespace) -> int:
    print(config_from_args(args, source=args.source, source_option=None).to_yaml(), end="")
    return 0


def run_components(args: argparse.Namespace) -> int:
    from pact.reference import summary
    from pact.registry import REGISTRIES

    rows = [
        (kind, name, summary(registry.get(name).__doc__, code=""))
        for kind, registry in REGISTRIES.items()
        for name in registry.names()
    ]
    print_table(("kind", "name", "description"), rows)
    return 0
