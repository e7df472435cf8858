"""``pact viz``: draw what a config prunes and merges on a built-in tiny VLM's image."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from pact.bench.tiny import FAMILIES, build
from pact.config import PactConfig
from pact.hooks import attached
from pact.viz import Rendering, render

LEGEND = "pruned: darkened and hatched; merged: one colour per cluster; kept alone: unchanged"


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


def run_viz(
    out: str | Path,
    family: str = "llava",
    text: str = "qwen2",
    config: Any = "pact",
    overrides: tuple[str, ...] = (),
    image: str | None = None,
    seed: int = 0,
    scale: int | None = None,
) -> tuple[Rendering, list[str]]:
    """Run ``config`` once on one image of a tiny model, save the overlay to ``out`` (PNG).

    Returns the rendering and one line per stage of the handle's stats.
    """
    if family not in FAMILIES:
        raise ValueError(f"--model must be one of {', '.join(FAMILIES)}; got {family!r}")
    path = Path(out)
    if not path.parent.is_dir():
        raise ValueError(f"--out: directory {str(path.parent)!r} does not exist")
    pact_config = PactConfig.load(config, overrides)
    size = parse_size(image)
    try:
        tiny = build(family, text=text, seed=seed, image_size=size)
    except ValueError as error:
        # Geometry problems come from the image size; name the option that set it.
        raise ValueError(f"--image {image}: {error}" if size else str(error)) from error
    batch = tiny.inputs([["text:4", "image", "text:4"]], seed=seed)
    with attached(tiny.model, pact_config) as handle, torch.no_grad():
        tiny.model(**batch)
        if handle.last_assignment is None:
            raise ValueError(f"--config {config!r} reduced nothing on this model: nothing to draw")
        rendering = render(handle, batch, row=0, scale=scale)
        stages = [
            f"stage at layer {stage.layer}: {s.visual_in[0]} visual tokens in, "
            f"{s.after_prune[0]} after pruning, {s.retrieved[0]} retrieved, "
            f"{s.after_merge[0]} out"
            for stage, s in zip(pact_config.stages, handle.stats.last, strict=False)
        ]
    rendering.image.save(path, format="PNG")
    return rendering, stages


def format_viz(path: str | Path, family: str, text: str, config: Any, rendering: Rendering,
               stages: list[str]) -> str:  # fmt: skip
    """What ``pact viz`` prints: the file, the counts per status, the stage stats."""
    counts = rendering.counts
    width, height = rendering.image.size
    survivors = counts["kept_alone"] + counts["clusters"]
    return "\n".join([
        f"wrote {path} ({width}x{height} px): tiny random-weight {family} ({text} decoder), "
        f"config {config}",
        f"visual tokens {counts['visual_tokens']}: pruned {counts['pruned']}, kept alone "
        f"{counts['kept_alone']}, merged {counts['merged']} into {counts['clusters']} clusters "
        f"-> {survivors} tokens",
        *stages,
        f"legend: {LEGEND}",
    ])  # fmt: skip
