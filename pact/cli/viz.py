"""``pact viz``: draw what a config prunes and merges on an image: by default a held-out
scene of pact's trained VLM, or a built-in tiny VLM's random image."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pact.cli.options import (
    add_config_options,
    check_tiny_family,
    config_from_args,
    config_label,
    positive_int,
)
from pact.cli.run_shapes import SHAPES, is_shapes
from pact.hooks.families import families_with

if TYPE_CHECKING:
    from pact.config import PactConfig
    from pact.viz import Rendering

LEGEND = "pruned: darkened and hatched; merged: one colour per cluster; kept alone: unchanged"


def add_viz(commands) -> None:
    """Add ``pact viz`` to the top-level ``commands``."""
    parser = commands.add_parser(
        "viz",
        help="draw the pruned tokens and merged clusters on an image (PNG, titled, with a legend)",
        description="Run a config once on one image and draw where it lands: by default a "
        "held-out scene of pact's trained VLM (the question, its answers with and without the "
        f"config in the title; a single-stage config reduces at layer 1 of its 6 unless --set "
        f"layer=N says otherwise), or a built-in random-weight VLM's image. {LEGEND}.",
    )
    parser.add_argument(
        "--model",
        default=SHAPES,
        help=f"{SHAPES} (pact's trained VLM; {SHAPES}:DIR for one you trained) or a tiny model "
        f"family: {', '.join(families_with(tiny=True))} (default: %(default)s)",
    )
    parser.add_argument("--scene", type=int, default=0,
                        help=f"test question whose scene is drawn ({SHAPES} only) "
                        "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--text", default="qwen2", help="text decoder of llava-style models")
    add_config_options(parser)
    parser.add_argument("--out", default="pact-viz.png", help="PNG file to write")
    parser.add_argument("--image", metavar="HxW", help="image size in px (default: the family's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and pixels")
    parser.add_argument(
        "--scale", type=positive_int, help="pixels per image pixel (default: >= 256 px high)"
    )
    parser.set_defaults(run=viz_command)


def viz_command(args: argparse.Namespace) -> int:
    path = Path(args.out)
    if not path.parent.is_dir():
        raise ValueError(f"--out: directory {str(path.parent)!r} does not exist")
    if is_shapes(args.model):
        return _viz_shapes(args, path)
    family = check_tiny_family(args.model)
    config = config_from_args(args)
    size = parse_size(args.image)
    rendering, stages = run_viz(
        path, family, args.text, config, args.config, size, args.seed, args.scale
    )
    counts = rendering.counts
    width, height = rendering.image.size
    survivors = counts["kept_alone"] + counts["clusters"]
    print(
        f"wrote {path} ({width}x{height} px): tiny random-weight {family} ({args.text} "
        f"decoder), config {args.config}\n"
        f"visual tokens {counts['visual_tokens']}: pruned {counts['pruned']}, kept alone "
        f"{counts['kept_alone']}, merged {counts['merged']} into {counts['clusters']} "
        f"clusters -> {survivors} tokens"
    )
    print("\n".join([*stages, f"legend: {LEGEND}"]))
    return 0


def _viz_shapes(args: argparse.Namespace, path: Path) -> int:
    """The overlay of test question ``--scene``'s image, titled with its answers."""
    from pact.cli.run_shapes import shapes_answers, shapes_config, shapes_overlay
    from pact.models.shapes.model import load
    from pact.models.shapes.score import examples

    if args.image:
        raise ValueError(f"--image sets a tiny model's image size; {args.model!r} draws a scene")
    if args.scene < 0:
        raise ValueError(f"--scene must be at least 0; got {args.scene}")
    config = shapes_config(args)  # checked before the model loads

    model = load(args.model.partition(":")[2] or None)
    example = examples("test", args.scene + 1)[args.scene]
    answers = shapes_answers(model, [example], config)
    label = config_label(args)
    title = (f"{label}, test scene {args.scene}: {example.question} -> {answers.reduced[0]} "
             f"(unreduced {answers.unreduced[0]}, true {example.answer})")  # fmt: skip
    counts = shapes_overlay(model, example, config, path, title, scale=args.scale or 4)
    if counts is None:
        raise ValueError(f"--config {label!r} reduced nothing on this model: nothing to draw")
    survivors = counts["kept_alone"] + counts["clusters"]
    print(f"wrote {path}: {title}\nvisual tokens {counts['visual_tokens']}: pruned "
          f"{counts['pruned']}, kept alone {counts['kept_alone']}, merged {counts['merged']} "
          f"into {counts['clusters']} clusters -> {survivors} tokens\nlegend: {LEGEND}")
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
            scale: int | None = None) -> tuple[Rendering, list[str]]:  # fmt: skip
    """Run ``config`` (named ``name`` in messages) once on one image of a tiny model, save
    the overlay to ``out`` (PNG).

    Returns the rendering and one line per stage of the handle's stats.
    """
    import torch

    from pact.hooks import attached
    from pact.models.tiny import build
    from pact.viz import captioned, render

    try:
        tiny = build(family, text=text, seed=seed, image_size=size)
    except ValueError as error:
        # Geometry problems come from the image size; name the option that set it.
        shown = f"{size[0]}x{size[1]}" if size else ""
        raise ValueError(f"--image {shown}: {error}" if size else str(error)) from error
    batch = tiny.inputs([["text:4", "image", "text:4"]], seed=seed)
    with attached(tiny.model, config) as handle, torch.no_grad():
        tiny.model(**batch)
        if handle.last_assignment is None:
            raise ValueError(f"--config {name!r} reduced nothing on this model: nothing to draw")
        rendering = render(handle, batch, row=0, scale=scale)
        stages = [
            f"stage at layer {stage.layer}: {s.visual_in[0]} visual tokens in, "
            f"{s.after_prune[0]} after pruning, {s.retrieved[0]} retrieved, "
            f"{s.after_merge[0]} out"
            for stage, s in zip(config.stages, handle.stats.last, strict=False)
        ]
    title = f"tiny random-weight {family} ({text} decoder), config {name}"
    captioned(rendering.image, title, rendering.counts).save(out, format="PNG")
    return rendering, stages
