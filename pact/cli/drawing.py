"""The overlay PNG that ``pact viz`` and ``pact run`` write: one forward with the config
attached, the picture of what it pruned and merged, a title and a legend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pact.config import PactConfig


@dataclass
class Drawn:
    """What :func:`draw_reduction` drew: token counts (:func:`pact.viz.summarise`) and one
    line per stage from the handle's own stats (which must agree with the counts)."""

    counts: dict[str, int]
    stages: list[str]
    size: tuple[int, int]
    """Width and height of the PNG in pixels."""


def draw_reduction(model, inputs: dict, config: PactConfig, path: Path, title: str,
                   scale: int | None = None, row: int = 0) -> Drawn | None:  # fmt: skip
    """Run ``model`` once on ``inputs`` with ``config`` attached and save the captioned
    overlay of ``row`` to ``path``; None when the config reduced nothing."""
    import torch

    from pact.caption import captioned
    from pact.hooks import attached
    from pact.viz import render

    with attached(model, config) as handle, torch.no_grad():
        model(**inputs, logits_to_keep=1, use_cache=False)
        if handle.last_assignment is None:
            return None
        rendering = render(handle, inputs, row=row, scale=scale)
        stages = [
            f"stage at layer {stage.layer}: {s.visual_in[row]} visual tokens in, "
            f"{s.after_prune[row]} after pruning, {s.retrieved[row]} retrieved, "
            f"{s.after_merge[row]} out"
            for stage, s in zip(config.stages, handle.stats.last, strict=False)
        ]
    picture = captioned(rendering.image, title, rendering.counts)
    picture.save(path, format="PNG")
    return Drawn(rendering.counts, stages, picture.size)


def counts_sentence(counts: dict[str, int]) -> str:
    """The visual tokens of a drawing by status, in words (what the legend counts)."""
    survivors = counts["kept_alone"] + counts["clusters"]
    return (f"{counts['visual_tokens']} visual tokens: {counts['pruned']} pruned (dark, "
            f"hatched), {counts['kept_alone']} kept alone, {counts['merged']} merged into "
            f"{counts['clusters']} clusters (one colour each) -> {survivors} tokens")
