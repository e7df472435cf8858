"""``pact bench quality``: its options and command function (added to ``pact bench``)."""

from __future__ import annotations

import argparse

from pact.bench.commands import (
    _add_bench_options,
    _check_bench_args,
    _progress,
    _split,
    _write_outputs,
    check_at_least_one,
)


def _bench_quality(args: argparse.Namespace) -> int:
    from pact.quality import report as bench
    from pact.quality.bench import METHODS

    _check_bench_args(args)
    methods = _split(args.methods, "--methods")
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; known: {', '.join(METHODS)}")
    ratios = _split(args.ratios, "--ratios", float)
    if not all(0 < ratio < 1 for ratio in ratios):
        raise ValueError(f"--ratios must lie strictly between 0 and 1; got {args.ratios!r}")
    _check_quality_numbers(args)
    with _progress(args, 1 + len(methods) * len(ratios), "quality") as bar:
        report = bench.run_quality(
            args.model, methods, ratios, args.examples, args.layer, args.batch_size,
            args.calibration, args.tune_steps, bar,
        )  # fmt: skip
    print(bench.format_table(report))
    _write_outputs(args, report, bench.plot)
    return 0


def _check_quality_numbers(args: argparse.Namespace) -> None:
    from pathlib import Path

    from pact.quality.model import DECODER, WEIGHTS_NAME

    check_at_least_one(args, ("examples", "batch_size", "calibration", "tune_steps"))
    if not 0 <= args.layer < DECODER["layers"]:
        raise ValueError(f"--layer must be in [0, {DECODER['layers']}); got {args.layer}")
    if args.model is not None and not (Path(args.model) / WEIGHTS_NAME).is_file():
        raise ValueError(f"--model: no {WEIGHTS_NAME} in {args.model!r}")


def add_bench_quality(commands) -> None:
    """Add ``pact bench quality`` to the ``pact bench`` subcommands."""
    from pact.quality.bench import DEFAULT_RATIOS, METHODS

    parser = commands.add_parser(
        "quality",
        help="accuracy kept vs reduction ratio on pact's trained benchmark VLM (offline)",
        description="Every method at several reduction ratios on the test split of pact's "
        "synthetic VQA task, with the shipped trained model: accuracy relative to the "
        "unreduced model, measured reduction ratio, and a plot of one against the other.",
    )
    parser.add_argument("--methods", default=",".join(METHODS), metavar="A,B",
                        help=f"comma list of {', '.join(METHODS)} (default: all)")  # fmt: skip
    parser.add_argument("--ratios", default=",".join(str(r) for r in DEFAULT_RATIOS),
                        metavar="R,R", help="target fractions of visual tokens removed "
                        "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--examples", type=int, default=1000,
                        help="test examples scored per point (default: 1000)")  # fmt: skip
    parser.add_argument("--layer", type=int, default=2,
                        help="decoder layer of single-stage methods (default: 2 of 8)")  # fmt: skip
    parser.add_argument("--model", metavar="DIR",
                        help="a trained model folder (default: the shipped weights)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64, help="examples per forward")
    parser.add_argument("--calibration", type=int, default=32,
                        help="test examples that tune image-dependent knobs (default: 32)")
    parser.add_argument("--tune-steps", type=int, default=7, help="tries per tuning (default: 7)")
    _add_bench_options(parser, seed=False)  # the task's splits are fixed: nothing to seed
    parser.set_defaults(run=_bench_quality, command="bench quality")
