"""The ``pact`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pact.bench.commands import add_bench
from pact.config import PactConfig
from pact.errors import ConfigError, UnknownNameError
from pact.presets import list_presets, preset_text
from pact.registry import REGISTRIES


def _presets(args: argparse.Namespace) -> int:
    if args.show:
        print(preset_text(args.show), end="")
        return 0
    for name in list_presets():
        summary = preset_text(name).splitlines()[0].lstrip("# ").strip()
        print(f"{name:14s} {summary}")
    return 0


def _config(args: argparse.Namespace) -> int:
    print(PactConfig.load(args.source, args.set).to_yaml(), end="")
    return 0


def _components(args: argparse.Namespace) -> int:
    for kind, registry in REGISTRIES.items():
        for name in registry.names():
            cls = registry.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"{kind:10s} {name:14s} {doc}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from pact.bench.demo import format_report, run_demo  # imports transformers

    baseline, reduced = run_demo(
        args.model, args.text, args.config, tuple(args.set), args.max_new_tokens, seed=args.seed
    )
    print(format_report(args.model, args.text, baseline, reduced))
    return 0


def _viz(args: argparse.Namespace) -> int:
    from pact.bench.viz_demo import format_viz, run_viz  # imports transformers

    rendering, stages = run_viz(
        args.out, args.model, args.text, args.config, tuple(args.set), args.image, args.seed,
        args.scale,
    )  # fmt: skip
    print(format_viz(args.out, args.model, args.text, args.config, rendering, stages))
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return int(text)


def _add_viz(commands) -> None:
    viz = commands.add_parser(
        "viz", help="draw the pruned tokens and merged clusters on a tiny VLM's image (PNG)"
    )
    viz.add_argument(
        "--model",
        default="llava",
        help="tiny model family: llava, llava_next, llava_onevision, qwen2_vl, qwen2_5_vl "
        "(default: llava)",
    )
    viz.add_argument("--text", default="qwen2", help="text decoder of llava-style models")
    viz.add_argument("--config", default="pact", help="preset name or config file")
    viz.add_argument("--out", default="pact-viz.png", help="PNG file to write")
    viz.add_argument("--image", metavar="HxW", help="image size in px (default: the family's)")
    viz.add_argument("--seed", type=int, default=0, help="seed of weights and pixels")
    viz.add_argument(
        "--scale", type=_positive_int, help="pixels per image pixel (default: >= 256 px high)"
    )
    _add_overrides(viz)
    viz.set_defaults(run=_viz)


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override, e.g. stages.0.clusterer.cutoff=0.3 or clusterer.cutoff=0.3 (all stages)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pact", description="Training-free visual token reduction for VLMs (PACT)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    presets = commands.add_parser("presets", help="list the official presets")
    presets.add_argument("--show", metavar="NAME", help="print one preset's YAML")
    presets.set_defaults(run=_presets)

    config = commands.add_parser("config", help="validate a config and print it in full")
    config.add_argument("source", help="preset name, or path to a YAML/JSON config")
    _add_overrides(config)
    config.set_defaults(run=_config)

    run = commands.add_parser(
        "run", help="reduce and generate on a built-in tiny VLM, next to no reduction (offline)"
    )
    run.add_argument("--model", default="llava", help="tiny model family (default: llava)")
    run.add_argument("--text", default="qwen2", help="text decoder of llava-style models")
    run.add_argument("--config", default="pact", help="preset name or config file")
    run.add_argument("--max-new-tokens", type=int, default=8, help="greedy tokens per row")
    run.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    _add_overrides(run)
    run.set_defaults(run=_run)

    components = commands.add_parser("components", help="list registered components")
    components.set_defaults(run=_components)
    _add_viz(commands)
    add_bench(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, UnknownNameError, ValueError) as error:
        print(f"pact {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
