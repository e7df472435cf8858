"""``pact bench clusterers|fidelity|speed|quality``: the benchmark commands.

Each benchmark is one ``_add_<name>(commands)`` function that adds its subparser and sets
``run`` to its command function. A command checks every argument before anything slow
runs, calls the benchmark of :mod:`pact.bench`, prints its report as a table
(:mod:`pact.cli.tables`) and writes the JSON and the plot when asked. Heavy imports
(torch, transformers, matplotlib) happen inside the command functions.
"""

from __future__ import annotations

import argparse

from pact.bench.quality.methods import DEFAULT_METHODS, DEFAULT_RATIOS, METHODS
from pact.cli import tables
from pact.cli.options import (
    add_set_option,
    check_at_least_one,
    check_tiny_family,
    config_from_args,
    progress,
    split,
    write_outputs,
)
from pact.hooks.families import families_with
from pact.models.shapes.spec import DECODER, REDUCTION_LAYER


def add_bench(commands) -> None:
    """Add ``pact bench`` and its benchmarks to the top-level ``commands``."""
    bench = commands.add_parser(
        "bench",
        help="benchmarks: clusterers, fidelity, quality, speed",
        description="pact's benchmarks: each prints a table and writes JSON and a plot on request.",
    )
    benchmarks = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for add in (_add_clusterers, _add_fidelity, _add_quality, _add_speed):
        add(benchmarks)


def _add_bench_options(parser: argparse.ArgumentParser, run, seed: bool = True) -> None:
    """The options every benchmark takes; ``run`` is its command function."""
    parser.set_defaults(run=run, command=parser.prog.removeprefix("pact "))
    parser.add_argument(
        "--json", metavar="PATH", help="write every figure as JSON to PATH (default: no JSON)"
    )
    parser.add_argument(
        "--plot", metavar="PATH", help="write a matplotlib plot (PNG) to PATH (default: no plot)"
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch CPU threads (default: torch's own)"
    )
    if seed:
        parser.add_argument(
            "--seed", type=int, default=0, help="seed of inputs and weights (default: %(default)s)"
        )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (default: a bar on a terminal)"
    )


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


def _names(text: str | None, option: str) -> list[str] | None:
    """The comma list of ``option``; None where it was not given (the default set)."""
    return None if text is None else split(text, option)


def _number(text: str) -> int | float:
    """An integer if it reads as one (a layer index), else a float (a ratio)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _strengths(args: argparse.Namespace) -> dict:
    """:data:`pact.bench.tuning.STRENGTHS` with ``--strength PRESET=V1,V2`` replacements."""
    from pact.bench.tuning import STRENGTHS

    strengths = dict(STRENGTHS)
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
        strengths[preset] = (strengths[preset][0], tuple(split(values, "--strength", _number)))
    return strengths


def _check_presets(presets: list[str], option: str = "--presets") -> None:
    """Every preset name or config file loads; a benchmark builds its points from them."""
    from pact.config import PactConfig
    from pact.errors import ConfigError

    for preset in presets:
        try:
            PactConfig.load(preset)
        except ConfigError as error:
            raise ValueError(f"{option}: {error}") from None


# ------------------------------------------------------------------ clusterers
def _add_clusterers(commands) -> None:
    parser = commands.add_parser(
        "clusterers",
        help="time every registered clusterer on synthetic image-like keys",
        description="Every registered clusterer (plugins included) on the same smooth "
        "synthetic keys: median seconds, clusters made, largest member-to-center cosine "
        "distance; CPU and, when present, CUDA.",
    )
    parser.add_argument("--clusterers", metavar="A,B", help="comma list (default: all registered)")
    parser.add_argument("--sizes", default="576,2304,5000,8748", metavar="N,N",
                        help="token counts n")  # fmt: skip
    parser.add_argument("--dim", type=int, default=512, help="key dimension")
    parser.add_argument("--devices", metavar="D,D", help="cpu,cuda (default: cpu, and cuda if any)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls per size, after a warm-up")  # fmt: skip
    parser.add_argument("--budget", type=float, default=20.0, metavar="SECONDS",
                        help="per clusterer: once a call takes longer, larger sizes are "
                        "skipped")  # fmt: skip
    _add_bench_options(parser, _clusterers)


def _clusterers(args: argparse.Namespace) -> int:
    from pact.bench import clusterers as bench
    from pact.errors import UnknownNameError
    from pact.registry import CLUSTERERS

    _check_bench_args(args)
    names = _names(args.clusterers, "--clusterers")
    try:
        for name in names or ():
            CLUSTERERS.get(name)
    except UnknownNameError as error:
        raise ValueError(f"--clusterers: {error}") from None
    sizes = split(args.sizes, "--sizes", int)
    devices = _names(args.devices, "--devices")
    _check_clusterer_args(args, sizes, devices)
    total = len(names or CLUSTERERS.names()) * len(sizes) * len(devices or bench.default_devices())
    with progress(args, total, "clusterers") as bar:
        report = bench.run_clusterers(
            names, sizes, args.dim, devices, args.repeats, args.budget, args.seed, bar
        )
    tables.clusterers(report)
    write_outputs(args, report, bench.plot)
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


# ------------------------------------------------------------------ fidelity
def _add_fidelity(commands) -> None:
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
    parser.add_argument("--strength", action="append", default=[], metavar="PRESET=V1,V2",
                        help="values of PRESET's strength knob, replacing the three of "
                        "pact.bench.tuning.STRENGTHS; repeatable (default: none)")  # fmt: skip
    parser.add_argument(
        "--no-reference", action="store_true", help="leave out the `none` row (default: measured)"
    )
    parser.add_argument("--model", default="llava", help="tiny model family: "
                        f"{', '.join(families_with(tiny=True))}")  # fmt: skip
    parser.add_argument("--text", default="qwen2", help="text decoder of llava-style models")
    parser.add_argument("--new-tokens", type=int, default=8, help="greedy tokens per row")
    parser.add_argument("--x-axis", choices=("ratio", "layer-averaged"), default="ratio",
                        help="plot against the stats' reduction ratio or the layer-averaged "
                        "one")  # fmt: skip
    _add_bench_options(parser, _fidelity)


def _fidelity(args: argparse.Namespace) -> int:
    from pact.bench import fidelity as bench

    _check_bench_args(args)
    presets = _names(args.presets, "--presets")
    _check_presets(presets or ())
    strengths = _strengths(args)
    check_tiny_family(args.model)
    check_at_least_one(args, ("new_tokens",))
    count = len(bench.plan(presets or bench.default_presets(), strengths))
    with progress(args, count + (not args.no_reference), "fidelity") as bar:
        report = bench.run_fidelity(
            presets, strengths, args.model, args.text, args.new_tokens, args.seed,
            not args.no_reference, bar,
        )  # fmt: skip
    tables.fidelity(report)
    write_outputs(args, report, lambda data, path: bench.plot(data, path, args.x_axis))
    return 0


# ------------------------------------------------------------------ speed
def _add_speed(commands) -> None:
    parser = commands.add_parser(
        "speed",
        help="prefill latency, decode tokens/s, peak memory, KV bytes against none",
        description="Each preset or config file at several strengths (or tuned to one "
        "reduction ratio), with `none` in the same run: median prefill latency, decode "
        "tokens/s, peak memory, KV-cache bytes, visual tokens kept, seconds in scorer / "
        "clusterer / merger, and each figure's ratio to `none`.",
    )
    parser.add_argument("--configs", default="pact,fastv,tome,kmeans", metavar="A,B",
                        help="presets or config files; none is always measured")  # fmt: skip
    parser.add_argument("--strength", "--strengths", action="append", default=[],
                        metavar="PRESET=V1,V2", help="values of PRESET's strength knob, "
                        "replacing the three of pact.bench.tuning.STRENGTHS; repeatable "
                        "(default: none)")  # fmt: skip
    parser.add_argument("--target-ratio", type=float, metavar="R",
                        help="instead of strengths: tune each knob to remove about R of the "
                        "visual tokens (default: none, the strengths are used)")  # fmt: skip
    parser.add_argument(
        "--tune-steps", type=int, default=7, help="tries per tuning (default: %(default)s)"
    )
    parser.add_argument("--model", default="tiny:llava", metavar="SPEC",
                        help="tiny:<family>, shape:qwen2-0.5b, shape:qwen2-7b (a LLaVA-OneVision "
                        "around that decoder; shape:qwen2-0.5b:<family> for another family, "
                        "e.g. llava for visionzip), or a checkpoint path / hub id")  # fmt: skip
    parser.add_argument("--image-tokens", type=int, default=2000,
                        help="visual tokens of shape: models")  # fmt: skip
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="model dtype")  # fmt: skip
    parser.add_argument("--device", help="cpu or cuda (default: cuda if present)")
    parser.add_argument(
        "--image",
        metavar="FILE",
        help="input image (checkpoint models; required there, no default)",
    )
    parser.add_argument("--prompt", default="Describe the image.", help="prompt (checkpoints)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed prefills per configuration, after a warm-up")  # fmt: skip
    parser.add_argument("--decode-tokens", type=int, default=4,
                        help="greedy decoding steps timed after the prefill")  # fmt: skip
    _add_bench_options(parser, _speed)


def _speed(args: argparse.Namespace) -> int:
    from pact.bench import speed as bench
    from pact.bench.tuning import tunable
    from pact.models.shaped import check_model_spec, load

    _check_bench_args(args)
    names = [n for n in split(args.configs, "--configs") if n != "none"]
    _check_presets(names, "--configs")
    check_model_spec(args.model, args.image)
    _check_speed_numbers(args)
    strengths = _strengths(args)
    if args.target_ratio is not None:
        untunable = [name for name in names if not tunable(name)]
        if untunable:
            raise ValueError(f"--target-ratio: no tunable strength knob in {', '.join(untunable)}")
    subject = load(args.model, args.image_tokens, args.dtype, args.device, args.seed,
                   args.image, args.prompt)  # fmt: skip
    tuned = names if args.target_ratio is not None else []
    points = bench.plan([] if tuned else names, strengths)  # tuned points are added below
    with progress(args, 2 * len(tuned) + len(points), "speed") as bar:
        for name in tuned:
            bar.set_description(f"tuning {name}")
            points.append(bench.tuned_point(subject, name, args.target_ratio, args.tune_steps))
            bar.update(1)
        bar.set_description("speed")
        report = bench.run_speed(subject, points, args.repeats, args.decode_tokens, bar)
    report["target_ratio"] = args.target_ratio
    tables.speed(report)
    write_outputs(args, report, bench.plot)
    return 0


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


# ------------------------------------------------------------------ quality
def _add_quality(commands) -> None:
    parser = commands.add_parser(
        "quality",
        help="accuracy kept vs reduction ratio on pact's trained benchmark VLM (offline)",
        description="Methods at several reduction ratios on the test split of pact's "
        "synthetic VQA task, with the shipped trained model: accuracy relative to the "
        "unreduced model, measured reduction ratio, and a plot of one against the other. "
        f"The default run ({len(DEFAULT_METHODS)} methods x {len(DEFAULT_RATIOS)} ratios x 1000 "
        f"questions) takes about 5 minutes on 2 CPU threads; --methods all ({len(METHODS)} "
        "methods) about 8.",
    )
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), metavar="A,B",
                        help=f"comma list of methods, or all: {', '.join(METHODS)} "
                        "(default: %(default)s)")  # fmt: skip
    parser.add_argument(
        "--ratios",
        default=",".join(str(r) for r in DEFAULT_RATIOS),
        metavar="R,R",
        help="target fractions of visual tokens removed (default: %(default)s)",
    )
    parser.add_argument("--examples", type=int, default=1000,
                        help="test examples scored per point (default: %(default)s)")  # fmt: skip
    parser.add_argument(
        "--layer",
        type=int,
        default=REDUCTION_LAYER,
        help="decoder layer of single-stage methods (default: %(default)s "
        f"of the shipped model's {DECODER['layers']}; docs/quality.md)",
    )
    parser.add_argument("--model", metavar="DIR",
                        help="a trained model folder (default: the shipped weights)")  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=64, help="examples per forward (default: %(default)s)"
    )
    parser.add_argument("--calibration", type=int, default=32,
                        help="validation images that tune image-dependent knobs "
                        "(default: %(default)s)")  # fmt: skip
    parser.add_argument(
        "--tune-steps", type=int, default=7, help="tries per tuning (default: %(default)s)"
    )
    add_set_option(parser)  # applied to every method, after its own settings (ablations)
    _add_bench_options(parser, _quality, seed=False)  # fixed splits: nothing to seed


def _quality(args: argparse.Namespace) -> int:
    from pact.bench.quality import report as bench

    _check_bench_args(args)
    methods = list(METHODS) if args.methods == "all" else split(args.methods, "--methods")
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; known: {', '.join(METHODS)}")
    ratios = split(args.ratios, "--ratios", float)
    if not all(0 < ratio < 1 for ratio in ratios):
        raise ValueError(f"--ratios must lie strictly between 0 and 1; got {args.ratios!r}")
    _check_quality_numbers(args)
    from pact.config import PactConfig

    for name in methods:  # a bad --set is refused here, naming it, before the model loads
        method = METHODS[name]
        config_from_args(args, PactConfig.load(method.preset, method.overrides), None)
    with progress(args, 1 + len(methods) * len(ratios), "quality") as bar:
        report = bench.run_quality(
            args.model, methods, ratios, args.examples, args.layer, args.batch_size,
            args.calibration, args.tune_steps, bar, args.set,
        )  # fmt: skip
    tables.quality(report)
    write_outputs(args, report, bench.plot)
    return 0


def _check_quality_numbers(args: argparse.Namespace) -> None:
    from pathlib import Path

    from pact.models.shapes.spec import WEIGHTS_NAME

    check_at_least_one(args, ("examples", "batch_size", "calibration", "tune_steps"))
    if not 0 <= args.layer < DECODER["layers"]:
        raise ValueError(f"--layer must be in [0, {DECODER['layers']}); got {args.layer}")
    if args.model is not None and not (Path(args.model) / WEIGHTS_NAME).is_file():
        raise ValueError(f"--model: no {WEIGHTS_NAME} in {args.model!r}")
