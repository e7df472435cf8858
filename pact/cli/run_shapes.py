"""``pact run`` on pact's trained VLM (the default ``--model shapes``): held-out questions
answered with and without the config, the visual tokens each answer kept, and an overlay
of one scene; and what ``pact viz`` shares with it.

The model (:mod:`pact.models.shapes`) really looks at its image, so matching answers mean
the reduction kept what mattered. No timings: a model this small is bound by Python and
memory traffic, not by the visual tokens' arithmetic (``pact bench speed`` measures speed
on random-weight models of real checkpoints' shapes).

Presets are written for 28-layer decoders; on this 6-layer one a single-stage preset is
placed at :data:`~pact.models.shapes.spec.REDUCTION_LAYER` (unless ``--set layer=N``) and
a preset's stages past the last layer are dropped, and the output says so. A config file
runs as written and must fit the model.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pact.cli.drawing import counts_sentence, draw_reduction
from pact.cli.options import check_at_least_one, config_from_args, config_label, print_table

if TYPE_CHECKING:
    from pact.config import PactConfig

SHAPES_MODEL = "shapes"
"""``--model`` of the shipped trained model; ``shapes:DIR`` names a model trained by
``python -m pact.models.shapes.train``."""
NO_TIMINGS = ("no timings: a model this small is bound by overheads, not by its visual "
              "tokens; `pact bench speed --model shape:qwen2-7b` measures speed")  # fmt: skip


def is_shapes(model: str) -> bool:
    """Whether ``--model`` names the trained shapes model (shipped, or ``shapes:DIR``)."""
    return model == SHAPES_MODEL or model.startswith(SHAPES_MODEL + ":")


def check_trained_folder(folder: str | None, option: str) -> None:
    """A ValueError naming ``option`` unless ``folder`` (None: the shipped one) holds a
    model saved by the training script."""
    from pact.models.shapes.spec import WEIGHTS_NAME

    if folder is not None and not (Path(folder) / WEIGHTS_NAME).is_file():
        raise ValueError(f"{option}: no {WEIGHTS_NAME} in {folder!r} (a folder written by "
                         "`python -m pact.models.shapes.train`)")  # fmt: skip


def model_folder(model: str) -> str | None:
    """The folder of ``shapes:DIR``; None for the shipped ``shapes``."""
    return model.partition(":")[2] or None


def decoder_depth(folder: str | None) -> int:
    """Decoder layers of the model in ``folder`` (None: the shipped one), from its config."""
    import json

    from pact.models.shapes.spec import DECODER

    if folder is None:
        return DECODER["layers"]
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    return int(config["text_config"]["num_hidden_layers"])


def shapes_config(args: argparse.Namespace, depth: int) -> tuple[PactConfig, list[str]]:
    """``--config`` with ``--set``, fitted to a ``depth``-layer model, and notes on what was
    adapted: a single-stage *preset* whose layer no ``--set`` gives reduces at
    :data:`~pact.models.shapes.spec.REDUCTION_LAYER` (the added ``layer=`` joins
    ``args.set``, so labels show it); a preset's stages past the last layer are dropped. A
    config file is used as written; a stage past the last layer is an error naming it."""
    from pact.models.shapes.spec import REDUCTION_LAYER
    from pact.presets import list_presets

    config = config_from_args(args)
    preset = args.config in list_presets()
    layer_set = any(item.partition("=")[0].split(".")[-1] == "layer" for item in args.set)
    if preset and len(config.stages) == 1 and not layer_set:
        args.set = [*args.set, f"layer={REDUCTION_LAYER}"]
        config = config_from_args(args)
    beyond = [stage.layer for stage in config.stages if stage.layer >= depth]
    if beyond and not preset:
        raise ValueError(f"--config {args.config!r}: stages at layers {beyond} are past this "
                         f"model's {depth} decoder layers (0-{depth - 1})")  # fmt: skip
    notes = [f"preset stages at layers {beyond} dropped: the model has {depth} decoder "
             "layers"] if beyond else []  # fmt: skip
    return config.within(depth), notes


def check_shapes_args(args: argparse.Namespace) -> tuple[PactConfig, list[str]]:
    """Every check of ``pact run`` on the trained model, before any model work; the
    config it runs and the notes on how it was fitted."""
    if args.scenes is not None:
        check_at_least_one(args, ("scenes",))
    if args.first is not None and args.first < 0:
        raise ValueError(f"--first must be at least 0; got {args.first}")
    out = Path(args.out or "pact-run.png")
    if not out.resolve().parent.is_dir():
        raise ValueError(f"--out: folder of {str(out)!r} does not exist")
    folder = model_folder(args.model)
    check_trained_folder(folder, f"--model {args.model!r}")
    return shapes_config(args, decoder_depth(folder))


@dataclass
class Answers:
    """What the model answered to each question, unreduced and with the config."""

    questions: list[str]
    truth: list[str]
    unreduced: list[str]
    reduced: list[str]
    kept: list[int]
    visual: int


def shapes_answers(model, items, config: PactConfig, device: str = "cpu") -> Answers:
    """Greedy answers to ``items`` without and with ``config``; the visual tokens kept."""
    from pact.hooks import attached
    from pact.models.shapes.questions import VOCAB
    from pact.models.shapes.score import answer_ids
    from pact.models.shapes.spec import IMAGE_TOKENS

    answer_ids(model, items[:2], device=device)  # warm-up: the first forward pays one-offs
    unreduced = answer_ids(model, items, batch_size=len(items), device=device)
    with attached(model, config) as handle:
        reduced = answer_ids(model, items, batch_size=len(items), device=device)
        last = handle.stats.last
        kept = list(last[-1].after_merge) if last else [IMAGE_TOKENS] * len(items)
    return Answers([ex.question for ex in items], [ex.answer for ex in items],
                   [VOCAB[i] for i in unreduced], [VOCAB[i] for i in reduced], kept,
                   IMAGE_TOKENS)  # fmt: skip


def shapes_overlay(model, example, config: PactConfig, path: Path, title: str, scale: int = 4,
                   device: str = "cpu"):  # fmt: skip
    """Run ``config`` on one example and save the captioned overlay (the 96-px scene drawn
    ``scale`` times larger); what was drawn, or None when nothing was reduced."""
    from pact.models.shapes.model import batch

    inputs = {k: v.to(device) for k, v in batch([example]).items()}
    return draw_reduction(model, inputs, config, path, title, scale)


def run_shapes(args: argparse.Namespace, checked: tuple[PactConfig, list[str]]) -> int:
    """``pact run --model shapes``: the table of answers and the overlay PNG."""
    import torch

    from pact.models.shapes.model import load
    from pact.models.shapes.score import examples

    config, notes = checked
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    first, count = args.first or 0, args.scenes or 6
    model = load(model_folder(args.model)).to(device)
    items = examples("test", first + count)[first:]
    answers = shapes_answers(model, items, config, device)
    label = config_label(args)
    rows = [(q, t, u, r, f"{k}/{answers.visual}")
            for q, t, u, r, k in zip(answers.questions, answers.truth, answers.unreduced,
                                     answers.reduced, answers.kept, strict=True)]  # fmt: skip
    same = sum(u == r for u, r in zip(answers.unreduced, answers.reduced, strict=True))
    right = [sum(a == t for a, t in zip(given, answers.truth, strict=True))
             for given in (answers.unreduced, answers.reduced)]  # fmt: skip
    visual = answers.visual * len(items)
    before = [f"model: {model_folder(args.model) or 'pact-shapes-vqa (shipped, trained)'}; "
              f"config: {label}; test questions {first}..{first + count - 1}", *notes]
    after = [f"answers equal to the unreduced model's: {same}/{len(items)}; right: unreduced "
             f"{right[0]}/{len(items)}, {label} {right[1]}/{len(items)}",
             f"visual tokens kept: {sum(answers.kept)}/{visual} "
             f"(reduction ratio {1 - sum(answers.kept) / visual:.2f})"]  # fmt: skip
    path = Path(args.out or "pact-run.png")
    title = (f"{label}: {items[0].question} -> {answers.reduced[0]} "
             f"(unreduced: {answers.unreduced[0]})")  # fmt: skip
    drawn = shapes_overlay(model, items[0], config, path, title, device=device)
    after.append(f"wrote {path}: the first scene; {counts_sentence(drawn.counts)}" if drawn
                 else f"{label} reduced nothing: no overlay written")  # fmt: skip
    print_table(("question", "true", "unreduced", label, "visual kept"), rows, before,
                [*after, NO_TIMINGS])  # fmt: skip
    return 0
