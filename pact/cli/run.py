"""``pact run``: a config against no reduction, on pact's trained VLM, a checkpoint or a
built-in tiny VLM.

By default (``--model shapes``): held-out questions to the trained model that ships with
pact, answered with and without the config, and an overlay of what it kept
(:mod:`pact.cli.run_shapes`). On a checkpoint (a directory or hub id): one image and a
prompt, the chat template, a greedy answer with pact attached and, unless told not to,
once more without it. On a built-in random-weight tiny model (``--model llava`` ...): a
small batch with and without the config (offline; a plumbing check, not a quality measure).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from pact.cli.options import (
    add_config_options,
    check_tiny_family,
    config_from_args,
    config_label,
    positive_int,
    print_table,
    refuse_inapplicable,
)
from pact.cli.run_shapes import SHAPES_MODEL, check_shapes_args, is_shapes, run_shapes
from pact.config import PactConfig
from pact.hooks.families import families_with
from pact.models.shapes.spec import DECODER, REDUCTION_LAYER

DEMO_ROWS = (
    ["text:6", "image", "text:8"],
    ["text:3", "image", "text:5", "image", "text:4"],
)
"""Two rows of different lengths and image counts (left-padded into one batch)."""


APPLIES_TO = {
    "scenes": ("trained",), "first": ("trained",), "out": ("trained",),
    "image": ("checkpoint",), "prompt": ("checkpoint",), "dtype": ("checkpoint",),
    "attn": ("checkpoint",), "compare": ("checkpoint",), "text": ("tiny",), "seed": ("tiny",),
    "max_new_tokens": ("tiny", "checkpoint"), "device": ("trained", "checkpoint"),
}  # fmt: skip
"""The kinds of ``--model`` each option means something for; given with another kind, an
option is an error, never silently ignored."""


def add_run(commands) -> None:
    """Add ``pact run`` to the top-level ``commands``."""
    parser = commands.add_parser(
        "run",
        help="answers with and without a config: pact's trained VLM on held-out scenes "
        "(default, offline), a checkpoint, or a built-in tiny VLM",
        description="By default, pact's trained VLM (shipped, offline) answers held-out "
        "questions with and without the config; the table shows the visual tokens each answer "
        "kept and --out gets an overlay of the first scene (a single-stage preset is placed "
        f"at layer {REDUCTION_LAYER} of the model's {DECODER['layers']} unless --set layer=N "
        "says otherwise; the printed config shows it). On a checkpoint (a directory or hub id): "
        "one image and a prompt, a greedy answer with pact attached and, unless --no-compare, "
        "without it. On a built-in random-weight VLM: a small batch with and without the "
        "config (a plumbing check, not a quality measure).",
    )
    add = parser.add_argument
    add("--model", default=SHAPES_MODEL,
        help=f"{SHAPES_MODEL} (pact's trained VLM; {SHAPES_MODEL}:DIR for one you trained), a "
        "checkpoint (local directory or hub id owner/name) or a built-in tiny family "
        f"({', '.join(families_with(tiny=True))}; also tiny:NAME) (default: %(default)s)")
    add("--scenes", type=int, help="held-out questions to ask (trained model; default: 6)")
    add("--first", type=int, help="index of the first test question (trained model; default: 0)")
    add("--out", help="overlay PNG of the first scene (trained model; default: pact-run.png)")
    add("--image", help="image file (checkpoints; required there, no default)")
    add("--prompt", help="question about the image (checkpoints; default: 'Describe this "
        "image.')")
    add("--text", choices=("qwen2", "llama", "mistral", "phi3"),
        help="text decoder of llava-style tiny models (default: qwen2)")
    add_config_options(parser)
    add("--max-new-tokens", type=positive_int,
        help="greedy tokens (tiny models and checkpoints; default: 8 tiny, 32 checkpoint)")
    add("--seed", type=int, help="seed of tiny weights and inputs (default: 0)")
    add("--device", choices=("cpu", "cuda"),
        help="trained model and checkpoints (default: cuda when available, else cpu)")
    add("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
        help="checkpoints (default: auto: bfloat16 on cuda, float32 on cpu)")
    add("--attn", choices=("sdpa", "eager", "flash_attention_2"),
        help="attention implementation to load a checkpoint with (default: sdpa)")
    add("--compare", action=argparse.BooleanOptionalAction,
        help="checkpoints: also generate without pact and say whether answers match "
        "(default: --compare)")
    parser.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    from pact.models import checkpoint  # imports torch

    if is_shapes(args.model):
        kind = "trained"
    else:
        kind = "checkpoint" if checkpoint.is_checkpoint(args.model) else "tiny"
    refuse_inapplicable(args, kind, APPLIES_TO)
    if kind == "trained":
        return run_shapes(args, check_shapes_args(args))
    config = config_from_args(args)  # a bad --config or --set fails before any model work
    if kind == "checkpoint":
        reduced, baseline, model = run_checkpoint(args, config)
        print(checkpoint_report(args, reduced, baseline, model))
        return 0
    family = check_tiny_family(args.model.removeprefix(checkpoint.BUILTIN_PREFIX))
    text = args.text or "qwen2"
    baseline, reduced = run_demo(family, text, config, args.config, args.max_new_tokens or 8,
                                 seed=args.seed or 0)  # fmt: skip
    print_demo(family, text, baseline, reduced)
    return 0


# ------------------------------------------------------------------ a built-in tiny model
@dataclass
class RunResult:
    """One configuration's figures on the demo batch."""

    name: str
    prefill_ms: float
    tokens: list[list[int]]
    stats: dict[str, Any]


def _median_prefill_ms(model, batch: dict, repeats: int) -> float:
    import torch

    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model(**batch)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_config(model, batch: dict, config: PactConfig, name: str, new_tokens: int,
               repeats: int) -> RunResult:  # fmt: skip
    """Prefill timing, greedy generation and stats of ``config`` on ``batch``."""
    import torch

    from pact.hooks import attached

    with attached(model, config) as handle:
        prefill_ms = _median_prefill_ms(model, batch, repeats)
        handle.stats.reset()
        with torch.no_grad():
            output = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False)
        new = output[:, batch["input_ids"].shape[1] :].tolist()
        return RunResult(name, prefill_ms, new, handle.stats.summary())


def run_demo(family: str, text: str, config: PactConfig, name: str, new_tokens: int = 8,
             repeats: int = 3, seed: int = 0) -> tuple[RunResult, RunResult]:  # fmt: skip
    """``none`` and ``config`` (shown as ``name``) on the same tiny model and batch."""
    from pact.models.tiny import build

    tiny = build(family, text=text, seed=seed)
    rows = [list(row) for row in DEMO_ROWS]
    if tiny.video_token_id is not None:
        rows[1] = ["text:3", "video", "text:5"]
    batch = tiny.inputs(rows, padding_side="left", seed=seed)
    baseline = run_config(tiny.model, batch, PactConfig(), "none", new_tokens, repeats)
    reduced = run_config(tiny.model, batch, config, name, new_tokens, repeats)
    return baseline, reduced


def print_demo(family: str, text: str, baseline: RunResult, reduced: RunResult) -> None:
    """A table: prefill time, visual tokens kept, ratio, step milliseconds; then tokens."""
    last = reduced.stats["last_call"]
    ms = {step: f"{seconds * 1000:.1f}" for step, seconds in last["seconds"].items()}
    same = sum(a == b for a, b in zip(baseline.tokens, reduced.tokens, strict=True))
    rows = [
        ("prefill ms (median)", f"{baseline.prefill_ms:.1f}", f"{reduced.prefill_ms:.1f}"),
        ("visual tokens per row", _join(last["visual_in"]), _join(last["visual_out"])),
        ("reduction ratio", "0.00", f"{last['reduction_ratio']:.2f}"),
        *((f"{step} ms", "-", ms[step]) for step in ("score", "cluster", "merge")),
    ]
    before = [f"model: tiny random-weight {family} ({text} decoder), batch of "
              f"{len(baseline.tokens)}"]  # fmt: skip
    after = [
        f"greedy tokens, none: {baseline.tokens}",
        f"greedy tokens, {reduced.name}: {reduced.tokens}",
        f"rows with identical greedy output: {same}/{len(baseline.tokens)} "
        "(random weights: a plumbing check, not a quality measure)",
    ]
    print_table(("", "none", reduced.name), rows, before, after)


def _join(values: list[int]) -> str:
    return ",".join(str(v) for v in values) or "-"


# ------------------------------------------------------------------ a checkpoint
@dataclass
class Generation:
    """One greedy generation: the answer, its timings and (when reduced) pact's stats."""

    answer: str
    tokens: list[int]
    prefill_s: float
    generate_s: float
    stats: dict[str, Any] = field(default_factory=dict)


def generate(model, processor, inputs: dict, max_new_tokens: int, handle=None) -> Generation:
    """Greedy generation; prefill time is up to the first new token, the rest is decoding."""
    import torch
    from transformers import StoppingCriteriaList

    from pact.models.checkpoint import FirstTokenClock, synchronize

    clock = FirstTokenClock(model.device)
    tokenizer = getattr(processor, "tokenizer", processor)
    if handle is not None:
        handle.stats.reset()
    synchronize(model.device)
    start = time.perf_counter()
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stopping_criteria=StoppingCriteriaList([clock]),
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    synchronize(model.device)
    end = time.perf_counter()
    new = output[0, inputs["input_ids"].shape[1] :].tolist()
    answer = tokenizer.decode(new, skip_special_tokens=True).strip()
    first = clock.first or end
    stats = handle.stats.summary() if handle is not None else {}
    return Generation(answer, new, first - start, end - first, stats)


def run_checkpoint(args: argparse.Namespace, config: PactConfig):
    """``(reduced, unreduced or None, model)``; pact's attach-time checks run first."""
    from pact.hooks import attached
    from pact.models import checkpoint

    image = checkpoint.load_image(args.image)
    processor, model = checkpoint.load(args.model, args.device, args.dtype or "auto",
                                       args.attn or "sdpa")
    prompt = args.prompt or "Describe this image."
    inputs = checkpoint.build_inputs(processor, image, prompt, model.device, model.dtype)
    new_tokens = args.max_new_tokens or 32
    try:
        with attached(model, config) as handle:
            reduced = generate(model, processor, inputs, new_tokens, handle)
    except TypeError as error:
        # pact raises TypeError for model structures it does not support; main() turns
        # ValueError into exit code 2, so name the argument and re-raise as one.
        raise ValueError(f"--model {args.model!r}: {error}") from error
    compare = args.compare is not False  # default on
    baseline = generate(model, processor, inputs, new_tokens) if compare else None
    return reduced, baseline, model


def checkpoint_report(args: argparse.Namespace, reduced: Generation,
                      baseline: Generation | None, model) -> str:  # fmt: skip
    """Answer, reduction stats and timings; the unreduced answer when compared."""
    last = reduced.stats.get("last_call", {})
    seconds = last.get("seconds", {})
    steps = max(len(reduced.tokens) - 1, 1)
    lines = [
        f"model: {args.model} ({type(model).__name__}, {model.dtype}, {model.device})",
        f"config: {config_label(args)}",
        f"answer: {reduced.answer}",
        f"visual tokens in: {_join(last.get('visual_in', []))}",
        f"visual tokens out: {_join(last.get('visual_out', []))}",
        f"reduction ratio: {last.get('reduction_ratio', 0.0):.4f}",
        "pact seconds per step, score/cluster/merge (last reducing forward): "
        + "/".join(f"{seconds.get(k, 0.0):.4f}" for k in ("score", "cluster", "merge")),
        f"prefill s: {reduced.prefill_s:.3f}",
        f"generation s: {reduced.generate_s:.3f} ({len(reduced.tokens)} new tokens, "
        f"{reduced.generate_s / steps:.4f} s/token after the first)",
    ]
    if baseline is not None:
        lines += [
            f"unreduced answer: {baseline.answer}",
            f"unreduced prefill s: {baseline.prefill_s:.3f}",
            f"unreduced generation s: {baseline.generate_s:.3f}",
            f"answers match: {'yes' if baseline.tokens == reduced.tokens else 'no'}",
        ]
    lines.append(
        "timings: one run each, the first (pact) also pays warm-up; "
        "`pact bench speed` reports medians"
    )
    return "\n".join(lines)
