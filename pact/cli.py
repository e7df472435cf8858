"""The ``pact`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pact.bench.commands import add_bench
from pact.config import PactConfig
from pact.errors import ConfigError, UnknownNameError
from pact.eval.command import add_eval
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
    from pact.bench import checkpoint  # imports torch

    if checkpoint.is_checkpoint(args.model):
        return _run_checkpoint(args, checkpoint)
    if args.image or args.prompt:
        raise ValueError(
            f"--image/--prompt need a checkpoint --model (a directory or hub id owner/name); "
            f"{args.model!r} is a built-in tiny model"
        )
    from pact.bench.demo import format_report, run_demo  # imports transformers

    family = args.model.removeprefix(checkpoint.BUILTIN_PREFIX)
    baseline, reduced = run_demo(
        family, args.text, args.config, tuple(args.set), args.max_new_tokens or 8, seed=args.seed
    )
    print(format_report(family, args.text, baseline, reduced))
    return 0


def _run_checkpoint(args: argparse.Namespace, checkpoint) -> int:
    settings = checkpoint.Settings(
        args.model, args.image, args.prompt or "Describe this image.", args.config,
        tuple(args.set), args.max_new_tokens or 32, args.device, args.dtype, args.attn,
        args.compare,
    )  # fmt: skip
    reduced, baseline, model = checkpoint.run_checkpoint(settings)
    print(checkpoint.format_checkpoint_report(settings, reduced, baseline, model))
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


def _add_run(commands) -> None:
    run = commands.add_parser(
        "run",
        help="one image and a prompt on a checkpoint -> answer and reduction stats; "
        "without a checkpoint, a built-in tiny VLM next to no reduction (offline)",
    )
    run.add_argument(
        "--model",
        default="llava",
        help="checkpoint (local directory or hub id owner/name) or built-in tiny family "
        "(llava, llava_next, llava_onevision, qwen2_vl, qwen2_5_vl; also tiny:NAME) "
        "(default: llava)",
    )
    run.add_argument("--image", help="image file (checkpoints only)")
    run.add_argument("--prompt", help="question about the image (checkpoints only; "
                     "default: 'Describe this image.')")  # fmt: skip
    run.add_argument("--text", default="qwen2", help="text decoder of llava-style tiny models")
    run.add_argument("--config", default="pact", help="preset name or config file")
    run.add_argument("--max-new-tokens", type=_positive_int,
                     help="greedy tokens (default: 8 tiny, 32 checkpoint)")  # fmt: skip
    run.add_argument("--seed", type=int, default=0, help="seed of tiny weights and inputs")
    run.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    run.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                     default="auto", help="default: bfloat16 on cuda, float32 on cpu")  # fmt: skip
    run.add_argument("--attn", choices=("sdpa", "eager", "flash_attention_2"), default="sdpa",
                     help="attention implementation to load the checkpoint with")  # fmt: skip
    run.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                     help="also generate without pact and say whether answers match")  # fmt: skip
    _add_overrides(run)
    run.set_defaults(run=_run)


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

    _add_run(commands)
    components = commands.add_parser("components", help="list registered components")
    components.set_defaults(run=_components)
    _add_viz(commands)
    add_bench(commands)
    _add_overrides(add_eval(commands))
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
