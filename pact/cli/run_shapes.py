"""``pact run`` on pact's trained VLM (the default ``--model shapes``): held-out questions
answered with and without the config, the visual tokens each answer kept, and an overlay
of one scene.

The model (:mod:`pact.models.shapes`) really looks at its image, so matching answers mean
the reduction kept what mattered. No timings: a model this small is bound by Python and
memory traffic, not by the visual tokens' arithmetic (``pact bench speed`` measures speed
on random-weight models of real checkpoints' shapes).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pact.cli.options import config_from_args, config_label, print_table

if TYPE_CHECKING:
    from pact.config import PactConfig

SHAPES = "shapes"
"""``--model`` of the shipped trained model; ``shapes:DIR`` names a model trained by
``python -m pact.models.shapes.train``."""
NO_TIMINGS = ("no timings: a model this small is bound by overheads, not by its visual "
              "tokens; `pact bench speed --model shape:qwen2-7b` measures speed")  # fmt: skip


def shapes_config(args: argparse.Namespace) -> PactConfig:
    """``--config`` with ``--set``, placed where pact measures this model: a single-stage
    config whose layer no ``--set`` gives reduces at
    :data:`~pact.models.shapes.model.REDUCTION_LAYER` (the presets' layer 4 is past the
    layer where this 6-layer decoder reads the image). The added ``layer=`` joins
    ``args.set``, so every label shows it."""
    from pact.models.shapes.model import REDUCTION_LAYER

    config = config_from_args(args)
    layer_set = any(item.partition("=")[0].split(".")[-1] == "layer" for item in args.set)
    if len(config.stages) != 1 or layer_set:
        return config
    args.set = [*args.set, f"layer={REDUCTION_LAYER}"]
    return config_from_args(args)


def is_shapes(model: str) -> bool:
    """Whether ``--model`` names the trained shapes model (shipped, or ``shapes:DIR``)."""
    return model == SHAPES or model.startswith(SHAPES + ":")


@dataclass
class Answers:
    """What the model answered to each question, unreduced and with the config."""

    questions: list[str]
    truth: list[str]
    unreduced: list[str]
    reduced: list[str]
    kept: list[int]
    visual: int


def shapes_answers(model, items, config: PactConfig) -> Answers:
    """Greedy answers to ``items`` without and with ``config``; the visual tokens kept."""
    from pact.hooks import attached
    from pact.models.shapes.model import IMAGE_TOKENS
    from pact.models.shapes.questions import VOCAB
    from pact.models.shapes.score import answer_ids

    answer_ids(model, items[:2])  # warm-up: the first forward pays one-off costs
    unreduced = answer_ids(model, items, batch_size=len(items))
    with attached(model, config) as handle:
        reduced = answer_ids(model, items, batch_size=len(items))
        last = handle.stats.last
        kept = list(last[-1].after_merge) if last else [IMAGE_TOKENS] * len(items)
    return Answers([ex.question for ex in items], [ex.answer for ex in items],
                   [VOCAB[i] for i in unreduced], [VOCAB[i] for i in reduced], kept,
                   IMAGE_TOKENS)  # fmt: skip


def shapes_overlay(model, example, config: PactConfig, path: Path, title: str, scale: int = 4):
    """Run ``config`` on one example and save the captioned overlay (the 96-px scene drawn
    ``scale`` times larger); returns the counts, or None when nothing was reduced."""
    import torch

    from pact.hooks import attached
    from pact.models.shapes.model import batch
    from pact.viz import captioned, render

    inputs = batch([example])
    with attached(model, config) as handle, torch.no_grad():
        model(**inputs, logits_to_keep=1, use_cache=False)
        if handle.last_assignment is None:
            return None
        rendering = render(handle, inputs, row=0, scale=scale)
    captioned(rendering.image, title, rendering.counts).save(path, format="PNG")
    return rendering.counts


def run_shapes(args: argparse.Namespace, config: PactConfig) -> int:
    """``pact run --model shapes``: the table of answers and the overlay PNG."""
    from pact.models.shapes.model import load
    from pact.models.shapes.score import examples

    folder = args.model.partition(":")[2] or None
    model = load(folder)
    items = examples("test", args.first + args.scenes)[args.first:]
    answers = shapes_answers(model, items, config)
    label = config_label(args)
    rows = [(q, t, u, r, f"{k}/{answers.visual}")
            for q, t, u, r, k in zip(answers.questions, answers.truth, answers.unreduced,
                                     answers.reduced, answers.kept, strict=True)]  # fmt: skip
    same = sum(u == r for u, r in zip(answers.unreduced, answers.reduced, strict=True))
    right = [sum(a == t for a, t in zip(given, answers.truth, strict=True))
             for given in (answers.unreduced, answers.reduced)]  # fmt: skip
    before = [f"model: {folder or 'pact-shapes-vqa (shipped, trained)'}; config: {label}; "
              f"test questions {args.first}..{args.first + len(items) - 1}"]  # fmt: skip
    visual = answers.visual * len(items)
    after = [f"answers equal to the unreduced model's: {same}/{len(items)}; right: unreduced "
             f"{right[0]}/{len(items)}, {label} {right[1]}/{len(items)}",
             f"visual tokens kept: {sum(answers.kept)}/{visual} "
             f"(reduction ratio {1 - sum(answers.kept) / visual:.2f})"]  # fmt: skip
    path = Path(args.out)
    title = (f"{label}: {items[0].question} -> {answers.reduced[0]} "
             f"(unreduced: {answers.unreduced[0]})")  # fmt: skip
    counts = shapes_overlay(model, items[0], config, path, title)
    after.append(f"wrote {path}: the first scene, " + _counted(counts) if counts
                 else f"{label} reduced nothing: no overlay written")  # fmt: skip
    print_table(("question", "true", "unreduced", label, "visual kept"), rows, before,
                [*after, NO_TIMINGS])  # fmt: skip
    return 0


def _counted(counts: dict[str, int]) -> str:
    return (f"{counts['pruned']} tokens pruned (dark, hatched), {counts['merged']} merged into "
            f"{counts['clusters']} clusters (one colour each), {counts['kept_alone']} kept alone")
