"""``pact bench``: the benchmark command group of the ``pact`` command line.

Each benchmark is one ``_add_bench_<name>(commands)`` function listed in
:data:`BENCH_COMMANDS`; it adds its subparser and sets ``run`` to its command function.
Heavy imports (torch, transformers, matplotlib) happen inside the command functions, so
``pact --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from pact.registry import REGISTRIES


def _split(text: str, option: str, convert=str) -> list:
    """Comma-separated values of ``option``; bad ones raise ValueError naming the option."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{option} needs at least one value; got {text!r}")
    try:
        return [convert(item) for item in items]
    except ValueError:
        kind = "integer" if convert is int else "numeric"
        raise ValueError(f"{option} takes {kind} values; got {text!r}") from None


def _number(text: str) -> int | float:
    """An integer if it reads as one (a layer index), else a float (a ratio)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def check_at_least_one(args: argparse.Namespace, options: tuple[str, ...]) -> None:
    """Each of ``options`` (attribute names) is unset or at least 1, or a ValueError names it."""
    for option in options:
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be at least 1; got {value}")


def _check_bench_args(args: argparse.Namespace) -> None:
    """Checks shared by the benchmarks, made before anything slow runs."""
    from pathlib import Path

    for option in ("json", "plot"):
        path = getattr(args, option)
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise ValueError(f"--{option}: folder of {path!r} does not exist")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1; got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)


def _progress(args: argparse.Namespace, total: int, desc: str):
    """A progress bar on stderr, off with --quiet or when stderr is not a terminal."""
    from tqdm import tqdm

    quiet = args.quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=quiet, file=sys.stderr, leave=False)


def _write_outputs(args: argparse.Namespace, report: dict, plot) -> None:
    """The JSON report and the PNG plot, where asked for."""
    import json

    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(report, stream, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")


def _add_bench_options(parser: argparse.ArgumentParser, seed: bool = True) -> None:
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON to PATH")
    parser.add_argument("--plot", metavar="PATH", help="write a matplotlib plot (PNG) to PATH")
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch CPU threads (default: torch's own)"
    )
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="seed of inputs and weights")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _bench_clusterers(args: argparse.Namespace) -> int:
    from pact.bench import clusterers as bench
    from pact.errors import UnknownNameError as Unknown

    _check_bench_args(args)
    names = None if args.clusterers is None else _split(args.clusterers, "--clusterers")
    try:
        for name in names or ():
            REGISTRIES["clusterer"].get(name)
    except Unknown as error:
        raise ValueError(f"--clusterers: {error}") from None
    sizes = _split(args.sizes, "--sizes", int)
    devices = None if args.devices is None else _split(args.devices, "--devices")
    _check_clusterer_args(args, sizes, devices)
    count = len(names or REGISTRIES["clusterer"].names())
    total = count * len(sizes) * len(devices or bench.default_devices())
    with _progress(args, total, "clusterers") as progress:
        report = bench.run_clusterers(
            names, sizes, args.dim, devices, args.repeats, args.budget, args.seed, progress
        )
    print(bench.format_table(report))
    _write_outputs(args, report, bench.plot)
    return 0


def _check_clusterer_args(args: argparse.Namespace, sizes: list, devices: list | None) -> None:
    import torch

    if any(n < 1 for n in sizes):
        raise ValueError(f"--sizes must be positive; got {args.sizes!r}")
    for device in devices or ():
        if device not in ("cpu", "cuda"):
            raise ValueError(f"--devices takes cpu and cuda; got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--devices: cuda was asked for but torch sees no CUDA device")
    check_at_least_one(args, ("dim", "repeats"))
    if args.budget <= 0:
        raise ValueError(f"--budget must be positive; got {args.budget}")


def _add_bench_clusterers(commands) -> None:
    parser = commands.add_parser(
        "clusterers",
        help="time every registered clusterer on synthetic image-like keys",
        description="Every registered clusterer (plugins included) on the same smooth "
        "synthetic keys: median seconds, clusters made, largest member-to-center cosine "
        "distance; CPU and, when present, CUDA.",
    )
    parser.add_argument("--clusterers", metavar="A,B", help="comma list (default: all registered)")
    parser.add_argument(
        "--sizes",
        default="576,2304,5000,8748",
        metavar="N,N",
        help="token counts n (default: 576,2304,5000,8748)",
    )
    parser.add_argument("--dim", type=int, default=512, help="key dimension (default: 512)")
    parser.add_argument("--devices", metavar="D,D", help="cpu,cuda (default: cpu, and cuda if any)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed calls per size, after a warm-up (default: 3)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="per clusterer: once a call takes longer, larger sizes are skipped (default: 20)",
    )
    _add_bench_options(parser)
    parser.set_defaults(run=_bench_clusterers, command="bench clusterers")


def _bench_fidelity(args: argparse.Namespace) -> int:
    from pact.bench import fidelity as bench

    _check_bench_args(args)
    presets = None if args.presets is None else _split(args.presets, "--presets")
    _check_presets(presets or ())
    strengths = _strengths(args, bench.STRENGTHS)
    count = len(bench.plan(presets or bench.default_presets(), strengths))
    with _progress(args, count + (not args.no_reference), "fidelity") as progress:
        report = bench.run_fidelity(
            presets, strengths, args.model, args.text, args.new_tokens, args.seed,
            not args.no_reference, progress,
        )  # fmt: skip
    print(bench.format_table(report))
    _write_outputs(args, report, lambda data, path: bench.plot(data, path, args.x_axis))
    return 0


def _check_presets(presets: list[str], option: str = "--presets") -> None:
    from pact.config import PactConfig
    from pact.errors import ConfigError

    for preset in presets:
        try:
            PactConfig.load(preset)
        except ConfigError as error:
            raise ValueError(f"{option}: {error}") from None


def _add_bench_fidelity(commands) -> None:
    parser = commands.add_parser(
        "fidelity",
        help="reduced vs unreduced model: KL, top-1 agreement, exact match (offline)",
        description="Each preset at three strengths against no reduction on the same "
        "batch: KL of next-token distributions, top-1 agreement, exact match of greedy "
        "generations, achieved reduction ratio. The default tiny model has random "
        "weights: its figures only check the plumbing.",
    )
    parser.add_argument("--presets", metavar="A,B", help="presets or config files "
                        "(default: every preset but none)")  # fmt: skip
    parser.add_argument(
        "--strength",
        action="append",
        default=[],
        metavar="PRESET=V1,V2",
        help="values of PRESET's strength knob, replacing the defaults (repeatable)",
    )
    parser.add_argument("--no-reference", action="store_true", help="leave out the `none` row")
    parser.add_argument("--model", default="llava", help="tiny model family (default: llava)")
    parser.add_argument("--text", default="qwen2", help="text decoder of llava-style models")
    parser.add_argument(
        "--new-tokens", type=int, default=8, help="greedy tokens per row (default: 8)"
    )
    parser.add_argument(
        "--x-axis",
        choices=("ratio", "layer-averaged"),
        default="ratio",
        help="plot against the stats' reduction ratio or the layer-averaged one",
    )
    _add_bench_options(parser)
    parser.set_defaults(run=_bench_fidelity, command="bench fidelity")


def _bench_speed(args: argparse.Namespace) -> int:
    from pact.bench import speed as bench
    from pact.bench.speed_models import check_model_spec, load

    _check_bench_args(args)
    names = [n for n in _split(args.configs, "--configs") if n != "none"]
    _check_presets(names, "--configs")
    check_model_spec(args.model, args.image)
    _check_speed_numbers(args)
    strengths = _strengths(args, bench.STRENGTHS)
    if args.target_ratio is not None:
        untunable = [name for name in names if not bench.tunable(name)]
        if untunable:
            raise ValueError(f"--target-ratio: no tunable strength knob in {', '.join(untunable)}")
    subject = load(args.model, args.image_tokens, args.dtype, args.device, args.seed,
                   args.image, args.prompt)  # fmt: skip
    tuned = names if args.target_ratio is not None else []
    points = bench.plan([] if tuned else names, strengths)  # tuned points are added below
    with _progress(args, 2 * len(tuned) + len(points), "speed") as bar:
        for name in tuned:
            bar.set_description(f"tuning {name}")
            points.append(bench.tuned_point(subject, name, args.target_ratio, args.tune_steps))
            bar.update(1)
        bar.set_description("speed")
        report = bench.run_speed(subject, points, args.repeats, args.decode_tokens, bar)
    report["target_ratio"] = args.target_ratio
    print(bench.format_table(report))
    _write_outputs(args, report, bench.plot)
    return 0


def _strengths(args: argparse.Namespace, table: dict) -> dict:
    """The knob table with ``--strength PRESET=V1,V2`` replacements."""
    strengths = dict(table)
    # `bench fidelity` has no --target-ratio; `bench speed` takes one or the other.
    if args.strength and getattr(args, "target_ratio", None) is not None:
        raise ValueError("--strength and --target-ratio exclude each other")
    for item in args.strength:
        preset, sep, values = item.partition("=")
        if not sep or preset not in strengths:
            raise ValueError(
                f"--strength takes PRESET=V1,V2 with PRESET one of {', '.join(strengths)}; "
                f"got {item!r}"
            )
        strengths[preset] = (strengths[preset][0], tuple(_split(values, "--strength", _number)))
    return strengths


def _check_speed_numbers(args: argparse.Namespace) -> None:
    import torch

    check_at_least_one(args, ("repeats", "decode_tokens", "image_tokens", "tune_steps"))
    if args.target_ratio is not None and not 0 < args.target_ratio < 1:
        raise ValueError(f"--target-ratio must lie between 0 and 1; got {args.target_ratio}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cpu", "cuda") or (
        args.device == "cuda" and not torch.cuda.is_available()
    ):
        raise ValueError(f"--device takes cpu, or cuda where torch sees one; got {args.device!r}")


def _add_bench_speed(commands) -> None:
    parser = commands.add_parser(
        "speed",
        help="prefill latency, decode tokens/s, peak memory, KV bytes against none",
        description="Each preset or config file at several strengths (or tuned to one "
        "reduction ratio), with `none` in the same run: median prefill latency, decode "
        "tokens/s, peak memory, KV-cache bytes, visual tokens kept, seconds in scorer / "
        "clusterer / merger, and each figure's ratio to `none`.",
    )
    parser.add_argument("--configs", default="pact,fastv,tome,kmeans", metavar="A,B",
                        help="presets or config files; none is always measured "
                        "(default: pact,fastv,tome,kmeans)")  # fmt: skip
    parser.add_argument("--strength", "--strengths", action="append", default=[],
                        metavar="PRESET=V1,V2", help="values of PRESET's strength knob, "
                        "replacing the table's three (repeatable)")  # fmt: skip
    parser.add_argument("--target-ratio", type=float, metavar="R",
                        help="instead of strengths: tune each knob to remove about R of the "
                        "visual tokens")  # fmt: skip
    parser.add_argument("--tune-steps", type=int, default=7, help="tries per tuning (default: 7)")
    parser.add_argument("--model", default="tiny:llava", metavar="SPEC",
                        help="tiny:<family>, shape:qwen2-0.5b, shape:qwen2-7b, or a "
                        "checkpoint path / hub id (default: tiny:llava)")  # fmt: skip
    parser.add_argument("--image-tokens", type=int, default=2000,
                        help="visual tokens of shape: models (default: 2000)")  # fmt: skip
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="model dtype (default: float32)")  # fmt: skip
    parser.add_argument("--device",
                        help="cpu or cuda (default: cuda if present)")  # fmt: skip
    parser.add_argument("--image", metavar="FILE", help="input image (checkpoint models)")
    parser.add_argument("--prompt", default="Describe the image.", help="prompt (checkpoints)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed prefills per configuration, after a warm-up (default: 3)",
    )
    parser.add_argument(
        "--decode-tokens",
        type=int,
        default=4,
        help="greedy decoding steps timed after the prefill (default: 4)",
    )
    _add_bench_options(parser)
    parser.set_defaults(run=_bench_speed, command="bench speed")


def _add_bench_quality(commands) -> None:
    from pact.quality.command import add_bench_quality  # it builds on this module's helpers

    add_bench_quality(commands)


BENCH_COMMANDS = (_add_bench_clusterers, _add_bench_fidelity, _add_bench_quality, _add_bench_speed)
"""One function per benchmark; each adds its subparser to ``pact bench``."""


def add_bench(commands) -> None:
    """Add ``pact bench`` and its subcommands to the top-level ``commands``."""
    bench = commands.add_parser(
        "bench",
        help="benchmarks: clusterers, fidelity, quality, speed",
        description="pact's benchmarks.",
    )
    benchmarks = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for add in BENCH_COMMANDS:
        add(benchmarks)
