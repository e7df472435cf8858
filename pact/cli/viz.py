"""``pact viz``: draw what a config prunes and merges on an image: by default a held-out
scene of pact's trained VLM, or a built-in tiny VLM's random image."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pact.cli.drawing import Drawn, counts_sentence, draw_reduction
from pact.cli.options import (
    add_config_options,
    check_tiny_family,
    config_from_args,
    config_label,
    positive_int,
    refuse_inapplicable,
)
from pact.cli.run_shapes import SHAPES_MODEL, is_shapes
from pact.hooks.families import families_with
from pact.models.shapes.spec import DECODER, REDUCTION_LAYER

if TYPE_CHECKING:
    from pact.config import PactConfig

LEGEND = "pruned: darkened and hatched; merged: one colour per cluster; kept alone: unchanged"
APPLIES_TO = {"scene": ("trained",), "text": ("tiny",), "image": ("tiny",), "seed": ("tiny",)}
"""The kinds of ``--model`` each option means something for (others: an error)."""


def add_viz(commands) -> None:
    """Add ``pact viz`` to the top-level ``commands``."""
    parser = commands.add_parser(
        "viz",
        help="draw the pruned tokens and merged clusters on an image (PNG, titled, with a legend)",
        description="Run a config once on one image and draw where it lands: by default a "
        "held-out scene of pact's trained VLM (the question, its answers with and without the "
        f"config in the title; a single-stage preset is placed at layer {REDUCTION_LAYER} of "
        f"the model's {DECODER['layers']} unless --set layer=N says otherwise), or a built-in "
        f"random-weight VLM's image. {LEGEND}.",
    )
    add = parser.add_argument
    add("--model", default=SHAPES_MODEL,
        help=f"{SHAPES_MODEL} (pact's trained VLM; {SHAPES_MODEL}:DIR for one you trained) or a "
        f"tiny model family: {', '.join(families_with(tiny=True))} (default: %(default)s)")
    add("--scene", type=int, help="test question whose scene is drawn (trained model; default: 0)")
    add("--text", choices=("qwen2", "llama", "mistral", "phi3"),
        help="text decoder of llava-style tiny models (default: qwen2)")
    add_config_options(parser)
    add("--out", default="pact-viz.png", help="PNG file to write")
    add("--image", metavar="HxW", help="tiny models' image size in px (default: the family's)")
    add("--seed", type=int, help="seed of tiny weights and pixels (default: 0)")
    add("--scale", type=positive_int,
        help="pixels per image pixel (default: 4 on the trained model, else >= 256 px high)")
    parser.set_defaults(run=viz_command)


def viz_command(args: argparse.Namespace) -> int:
    path = Path(args.out)
    if not path.parent.is_dir():
        raise ValueError(f"--out: directory {str(path.parent)!r} does not exist")
    refuse_inapplicable(args, "trained" if is_shapes(args.model) else "tiny", APPLIES_TO)
    if is_shapes(args.model):
        return _viz_shapes(args, path)
    family = check_tiny_family(args.model)
    config = _reducing(config_from_args(args), args)
    text = args.text or "qwen2"
    drawn = run_viz(path, family, text, config, args.config, parse_size(args.image),
                    args.seed or 0, args.scale)  # fmt: skip
    width, height = drawn.size
    print(f"wrote {path} ({width}x{height} px): tiny random-weight {family} ({text} decoder), "
          f"config {config_label(args)}\n{counts_sentence(drawn.counts)}")
    print("\n".join([*drawn.stages, f"legend: {LEGEND}"]))
    return 0


def _reducing(config: PactConfig, args: argparse.Namespace) -> PactConfig:
    """``config`` if it has a stage: a config without one has nothing to draw."""
    if not config.stages:
        raise ValueError(f"--config {config_label(args)!r} reduces nothing: nothing to draw")
    return config


def _viz_shapes(args: argparse.Namespace, path: Path) -> int:
    """The overlay of test question ``--scene``'s image, titled with its answers."""
    from pact.cli.run_shapes import (
        check_trained_folder,
        decoder_depth,
        model_folder,
        shapes_answers,
        shapes_config,
        shapes_overlay,
    )
    from pact.models.shapes.model import load
    from pact.models.shapes.score import examples

    scene = args.scene or 0
    if scene < 0:
        raise ValueError(f"--scene must be at least 0; got {scene}")
    folder = model_folder(args.model)
    check_trained_folder(folder, f"--model {args.model!r}")
    config, notes = shapes_config(args, decoder_depth(folder))  # before the model loads
    config = _reducing(config, args)
    model = load(folder)
    example = examples("test", scene + 1)[scene]
    answers = shapes_answers(model, [example], config)
    label = config_label(args)
    title = (f"{label}, test scene {scene}: {example.question} -> {answers.reduced[0]} "
             f"(unreduced {answers.unreduced[0]}, true {example.answer})")  # fmt: skip
    drawn = shapes_overlay(model, example, config, path, title, scale=args.scale or 4)
    if drawn is None:
        raise ValueError(f"--config {label!r} reduced nothing on this model: nothing to draw")
    print("\n".join([*notes, f"wrote {path}: {title}", counts_sentence(drawn.counts),
                     f"legend: {LEGEND}"]))  # fmt: skip
    return 0


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"HxW"`` -> ``(H, W)``; None stays None (the family's default image)."""
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise ValueError(
            f"--image must look like HxW with positive integers (e.g. 32x48); got {text!r}"
        )
    return int(match[1]), int(match[2])


def run_viz(out: Path, family: str, text: str, config: PactConfig, name: str,
            size: tuple[int, int] | None = None, seed: int = 0,
            scale: int | None = None) -> Drawn:  # fmt: skip
    """Run ``config`` (named ``name`` in messages) once on one image of a tiny model and
    save the captioned overlay to ``out`` (PNG); what was drawn."""
    from pact.models.tiny import build

    try:
        tiny = build(family, text=text, seed=seed, image_size=size)
    except ValueError as error:
        # Geometry problems come from the image size; name the option that set it.
        shown = f"{size[0]}x{size[1]}" if size else ""
        raise ValueError(f"--image {shown}: {error}" if size else str(error)) from error
    batch = tiny.inputs([["text:4", "image", "text:4"]], seed=seed)
    title = f"tiny random-weight {family} ({text} decoder), config {name}"
    drawn = draw_reduction(tiny.model, batch, config, out, title, scale)
    if drawn is None:
        raise ValueError(f"--config {name!r} reduced nothing on this model: nothing to draw")
    return drawn
