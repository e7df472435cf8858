"""A title and a legend around an overlay of :mod:`pact.viz`: what ``pact viz`` and
``pact run`` save."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from pact.viz import HATCH, HATCH_EVERY, PRUNED_KEEP, cluster_colours


def captioned(image: Image.Image, title: str, counts: dict[str, int]) -> Image.Image:
    """``image`` under a ``title`` (wrapped to the picture's width) and above a legend: a
    swatch for each status and how many visual tokens it holds (:func:`pact.viz.summarise`)."""
    from PIL import ImageDraw, ImageFont

    font, line = ImageFont.load_default(size=14), 22
    width = max(image.width, 520)
    lines = _wrapped(title, font, width - 8)
    side = line - 6
    merged = f"merged into {counts['clusters']} clusters"
    entries = [("pruned", counts["pruned"], _pruned_swatch(side)),
               (merged, counts["merged"], _merged_swatch(side)),
               ("kept alone", counts["kept_alone"], np.full((side, side, 3), 235, np.uint8))]
    top = len(lines) * line + 8
    canvas = Image.new("RGB", (width, top + image.height + 8 + len(entries) * line), "white")
    draw = ImageDraw.Draw(canvas)
    for number, text in enumerate(lines):
        draw.text((4, 4 + number * line), text, fill="black", font=font)
    canvas.paste(image, (0, top))
    y = top + image.height + 8
    for label, count, swatch in entries:
        canvas.paste(Image.fromarray(swatch), (4, y))
        draw.rectangle((4, y, 4 + side - 1, y + side - 1), outline="grey")
        draw.text((line + 6, y), f"{label}: {count} visual tokens", fill="black", font=font)
        y += line
    return canvas


def _wrapped(text: str, font: Any, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels in ``font`` (words kept whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def _pruned_swatch(side: int) -> np.ndarray:
    """A grey square drawn as :func:`pact.viz.overlay` draws a pruned token."""
    ys, xs = np.mgrid[0:side, 0:side]
    swatch = np.full((side, side, 3), 200 * PRUNED_KEEP, np.float32)
    swatch[(xs + ys) % HATCH_EVERY == 0] = HATCH
    return swatch.astype(np.uint8)


def _merged_swatch(side: int) -> np.ndarray:
    """Three cluster colours side by side, as :func:`pact.viz.overlay` tints merged tokens."""
    colours = list(cluster_colours(np.arange(3)).values())
    stripes = np.array_split(np.arange(side), 3)
    swatch = np.zeros((side, side, 3), np.uint8)
    for colour, columns in zip(colours, stripes, strict=True):
        swatch[:, columns] = colour
    return swatch
