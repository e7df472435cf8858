"""``pact viz``: draw what a config prunes and merges on a built-in tiny VLM's image."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pact.cli.options import add_config_options, check_tiny_family, config_from_args, positive_int
from pact.hooks.families import families_with

if TYPE_CHECKING:
    from pact.config import PactConfig
    from pact.viz import Rendering

LEGEND = "pruned: darkened and hatched; merged: one colour per cluster; kept alone: unchanged"


def add_viz(commands) -> None:
    """Add ``pact viz`` to the top-level ``commands``."""
    parser = commands.add_parser(
        "viz",
        help="draw the pruned tokens and merged clusters on a tiny VLM's image (PNG)",
        description="Run a config once on one image of a built-in random-weight VLM and draw "
        f"where it lands: {LEGEND}.",
    )
    parser.add_argument(
        "--model",
        default="llava",
        help=f"tiny model family: {', '.join(families_with(tiny=True))} (default: %(default)s)",
    )
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
    family = check_tiny_family(args.model)
    path = Path(args.out)
    if not path.parent.is_dir():
        raise ValueError(f"--out: directory {str(path.parent)!r} does not exist")
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
    from pact.viz import render

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
    rendering.image.save(out, format="PNG")
    return rendering, stages
