"""Where a reduction lands on the image: visual tokens -> image regions, and an overlay.

Three steps, each usable alone:

1. :func:`token_maps` turns a batch's pixel values into display images and, for every
   visual placeholder of a row, the box of the image it stands for (LLaVA-1.5 patch grids,
   LLaVA-NeXT / OneVision any-resolution base tile + crops, Qwen2-VL merged patches).
   Any-resolution newline tokens are placeholders too but cover no patch: their box is None.
2. :func:`token_status` reads ``handle.last_assignment`` (what the last reducing forward
   did to each original token): pruned, kept alone, or merged into a cluster.
3. :func:`overlay` draws it: pruned tokens darkened and hatched, one colour per cluster,
   tokens kept alone left clear. :func:`render` does all three for a hooked model.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pact.hooks.families import VLM_FAMILIES

Box = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)`` in display pixels, ends exclusive."""
PRUNED, KEPT, MERGED = 0, 1, 2
"""Token status codes of :func:`token_status`."""
PRUNED_KEEP = 0.3
"""Pruned pixels keep this fraction of their brightness..."""
HATCH = (255, 255, 255)
"""...except on diagonal hatch lines, drawn in this colour every :data:`HATCH_EVERY` px."""
HATCH_EVERY = 4
MERGE_ALPHA = 0.6
"""Weight of the cluster colour over the image in merged tokens."""
GAP = 4
"""White pixels between panels (base tile | crops; several images)."""


@dataclass(frozen=True)
class Geometry:
    """How a family's processor cut images into visual tokens."""

    family: str
    image_token_id: int
    patch: int
    """Vision patch side (px)."""
    tile: int = 0
    """LLaVA-style vision input side (px)."""
    pinpoints: tuple[tuple[int, int], ...] = ()
    """Any-resolution canvases ``(h, w)`` in px."""
    merge: int = 2
    """Qwen-VL spatial merge."""
    temporal: int = 2
    """Qwen-VL temporal patch."""
    max_tiles: int = 9
    """OneVision ``anyres_max_N``: larger feature grids are downscaled to ~N tiles."""

    @property
    def grid(self) -> str | None:
        """The family's visual grid (:attr:`pact.hooks.families.Family.grid`)."""
        family = VLM_FAMILIES.get(self.family)
        return None if family is None else family.grid

    @classmethod
    def from_model(cls, model: Any) -> Geometry:
        """Read the geometry from a transformers VLM's config (tiny or real checkpoint)."""
        config = model.config
        family = config.model_type
        grid = VLM_FAMILIES[family].grid if family in VLM_FAMILIES else None
        if grid is None:
            raise ValueError(f"no token geometry for model type {family!r}")
        vision = config.vision_config
        if grid == "merged":
            merge, temporal = vision.spatial_merge_size, vision.temporal_patch_size
            return cls(family, config.image_token_id, vision.patch_size, merge=merge,
                       temporal=temporal)  # fmt: skip
        aspect = getattr(config, "vision_aspect_ratio", "anyres_max_9") or "anyres_max_9"
        pinpoints = tuple(tuple(p) for p in getattr(config, "image_grid_pinpoints", None) or ())
        return cls(family, config.image_token_id, vision.patch_size, vision.image_size,
                   pinpoints, max_tiles=int(aspect.removeprefix("anyres_max_")))  # fmt: skip


@dataclass
class TokenMap:
    """A display image and the box of each visual token drawn on it (placeholder order)."""

    image: np.ndarray
    """``[H, W, 3]`` uint8."""
    boxes: list[Box | None] = field(default_factory=list)


def to_display(pixels: Tensor | np.ndarray) -> np.ndarray:
    """``[3, H, W]`` normalised pixels -> ``[H, W, 3]`` uint8, stretched to 0..255.

    Min-max stretching needs no knowledge of the processor's mean and std, and shows
    random test pixels as well as real ones.
    """
    array = np.asarray(torch.as_tensor(pixels).detach().float().cpu())
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return np.round(scaled * 255).astype(np.uint8).transpose(1, 2, 0)


def grid_boxes(rows: int, cols: int, height: int, width: int, x0: int = 0, y0: int = 0):
    """Row-major boxes of a ``rows x cols`` grid covering ``height x width`` px at (x0, y0).

    Integer boundaries ``floor(i * height / rows)`` tile the area without overlap, also
    when a grid was resampled (OneVision's downscaled features).
    """
    ys = [y0 + (i * height) // rows for i in range(rows + 1)]
    xs = [x0 + (j * width) // cols for j in range(cols + 1)]
    return [(xs[j], ys[i], xs[j + 1], ys[i + 1]) for i in range(rows) for j in range(cols)]


def llava_map(pixel_values: Tensor, geometry: Geometry) -> TokenMap:
    """LLaVA-1.5: one square ``[3, S, S]`` image, ``(S / patch)^2`` tokens row by row."""
    image = to_display(pixel_values)
    side = image.shape[0] // geometry.patch
    return TokenMap(image, grid_boxes(side, side, image.shape[0], image.shape[1]))


def anyres_map(
    pixel_values: Tensor, image_size: tuple[int, int], geometry: Geometry, base_only: bool = False
) -> TokenMap:
    """LLaVA-NeXT / OneVision: base tile panel, then the crops panel with a newline per row.

    ``pixel_values`` is ``[tiles, 3, T, T]`` (tile 0 the whole image, then the crops row by
    row); the crops panel shows the canvas they tile without the padding the model unpads.
    ``base_only``: OneVision's multi-image rows (base tile and one newline).
    """
    from transformers.image_processing_utils import select_best_resolution

    tile, grid = geometry.tile, geometry.tile // geometry.patch
    base = to_display(pixel_values[0])
    if base_only:
        return TokenMap(base, [*grid_boxes(grid, grid, tile, tile), None])
    height, width = (int(v) for v in image_size)
    best = select_best_resolution((height, width), [list(p) for p in geometry.pinpoints])
    tiles_h, tiles_w = best[0] // tile, best[1] // tile
    crops = pixel_values[1 : 1 + tiles_h * tiles_w].reshape(tiles_h, tiles_w, 3, tile, tile)
    canvas = crops.permute(2, 0, 3, 1, 4).reshape(3, tiles_h * tile, tiles_w * tile)
    rows, cols, top, left = _unpadded(tiles_h * grid, tiles_w * grid, height, width)
    patch = geometry.patch
    canvas = canvas[:, top * patch : (top + rows) * patch, left * patch : (left + cols) * patch]
    ratio = math.sqrt(rows * cols / (geometry.max_tiles * grid**2))
    if geometry.family == "llava_onevision" and ratio > 1.1:
        rows, cols = int(rows // ratio), int(cols // ratio)  # the model's bilinear downscale
    crop_boxes = grid_boxes(rows, cols, canvas.shape[1], canvas.shape[2], x0=tile + GAP)
    boxes: list[Box | None] = list(grid_boxes(grid, grid, tile, tile))
    for row in range(rows):  # each feature row ends with a newline token (no patch)
        boxes += [*crop_boxes[row * cols : (row + 1) * cols], None]
    return TokenMap(_side_by_side([base, to_display(canvas)]), boxes)


def _unpadded(rows: int, cols: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Feature rows, cols and top/left offset kept by transformers' ``unpad_image``."""
    if width / height > cols / rows:  # wider than the canvas: padding rows top and bottom
        padding = (rows - int(round(height * (cols / width), 7))) // 2
        return rows - 2 * padding, cols, padding, 0
    padding = (cols - int(round(width * (rows / height), 7))) // 2
    return rows, cols - 2 * padding, 0, padding


def qwen_map(pixel_values: Tensor, grid_thw: tuple[int, int, int], geometry: Geometry) -> TokenMap:
    """Qwen2-VL: ``[t*h*w, 3*T*p*p]`` flattened patches; one token per merged m x m block.

    Undoes the processor's patch order ``(t, h/m, w/m, m, m)`` to show the image (the
    first of each T temporal frames; frame groups side by side).
    """
    t, h, w = (int(v) for v in grid_thw)
    m, p, temporal = geometry.merge, geometry.patch, geometry.temporal
    patches = pixel_values.reshape(t, h // m, w // m, m, m, 3, temporal, p, p)
    frames = patches.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t, temporal, 3, h * p, w * p)
    boxes: list[Box | None] = []
    for index in range(t):  # tokens are ordered frame group, block row, block column
        boxes += grid_boxes(h // m, w // m, h * p, w * p, x0=index * (w * p + GAP))
    return TokenMap(_side_by_side([to_display(frame[0]) for frame in frames]), boxes)


def _side_by_side(images: list[np.ndarray]) -> np.ndarray:
    """Panels left to right, top-aligned, :data:`GAP` white pixels apart."""
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images) + GAP * (len(images) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for image in images:
        out[: image.shape[0], x : x + image.shape[1]] = image
        x += image.shape[1] + GAP
    return out


def token_maps(geometry: Geometry, batch: dict[str, Tensor], row: int = 0) -> list[TokenMap]:
    """One :class:`TokenMap` per image of ``row`` of a processor (or tiny-model) batch.

    Images are matched to rows in order, by their placeholder counts.
    """
    ids = batch["input_ids"]
    counts = (ids == geometry.image_token_id).sum(dim=1).tolist()
    maps, image, per_row = [], 0, _images_per_row(batch, len(counts))
    for index, wanted in enumerate(counts):
        taken = []
        while sum(len(m.boxes) for m in taken) < wanted:
            base_only = per_row is not None and per_row[index] > 1
            taken.append(_image_map(geometry, batch, image, base_only))
            image += 1
        if sum(len(m.boxes) for m in taken) != wanted:
            raise ValueError(f"row {index}: {wanted} image tokens do not match the images' grids")
        if index == row:
            maps = taken
    return maps


def _images_per_row(batch: dict[str, Tensor], rows: int) -> list[int] | None:
    counts = batch.get("batch_num_images")
    return None if counts is None else [int(c) for c in counts.tolist()][:rows]


def _image_map(geometry: Geometry, batch: dict, image: int, base_only: bool) -> TokenMap:
    """The token map of the batch's ``image``-th image."""
    pixels = batch["pixel_values"]
    if geometry.grid == "merged":
        grids = batch["image_grid_thw"].tolist()
        start = sum(math.prod(g) for g in grids[:image])
        return qwen_map(pixels[start : start + math.prod(grids[image])], grids[image], geometry)
    if geometry.grid == "anyres":
        size = batch["image_sizes"][image].tolist()
        return anyres_map(pixels[image], size, geometry, base_only)
    return llava_map(pixels[image], geometry)


def token_status(assignment: Tensor, slots: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Status (:data:`PRUNED` / :data:`KEPT` / :data:`MERGED`) and cluster of tokens at ``slots``.

    ``assignment`` is one row of ``handle.last_assignment``; a cluster is named by the
    original slot of the token that represents it (-1 for pruned tokens). A token is merged
    when its cluster holds more than one original token (its center included).
    """
    assignment = assignment.detach().cpu().long()
    cluster = assignment[slots.cpu()]
    members = torch.bincount(assignment[assignment >= 0], minlength=assignment.numel())
    size = torch.where(cluster >= 0, members[cluster.clamp(min=0)], 0)
    status = torch.full_like(cluster, KEPT)
    status[size > 1] = MERGED
    status[cluster < 0] = PRUNED
    return status.numpy().astype(np.int8), cluster.numpy()


def cluster_colours(clusters: np.ndarray) -> dict[int, tuple[int, int, int]]:
    """A bright colour per cluster id; golden-ratio hues keep neighbouring ids apart."""
    colours = {}
    for rank, cluster in enumerate(sorted({int(c) for c in clusters if c >= 0})):
        hue = (rank * 0.6180339887) % 1.0
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
        colours[cluster] = (round(red * 255), round(green * 255), round(blue * 255))
    return colours


def overlay(
    image: np.ndarray | Image.Image,
    boxes: list[Box | None],
    status: np.ndarray,
    cluster_of: np.ndarray,
    scale: int = 1,
) -> Image.Image:
    """``image`` with pruned tokens darkened and hatched and each merged cluster tinted.

    Tokens kept alone are left as they are; tokens with no box (newlines) are not drawn.
    ``scale`` enlarges the image (nearest neighbour) first, so small patches stay visible.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if not len(boxes) == len(status) == len(cluster_of):
        raise ValueError("boxes, status and cluster_of must have one entry per token")
    out = pixels.repeat(scale, axis=0).repeat(scale, axis=1).astype(np.float32)
    height, width = out.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    hatch = (xs + ys) % HATCH_EVERY == 0
    colours = cluster_colours(cluster_of[status == MERGED])
    for box, state, cluster in zip(boxes, status, cluster_of, strict=True):
        if box is None or state == KEPT:
            continue
        x0, y0, x1, y1 = (v * scale for v in box)
        region = out[y0:y1, x0:x1]
        if state == PRUNED:
            region *= PRUNED_KEEP
            region[hatch[y0:y1, x0:x1]] = HATCH
        else:
            colour = np.asarray(colours[int(cluster)], dtype=np.float32)
            region *= 1 - MERGE_ALPHA
            region += MERGE_ALPHA * colour
    return Image.fromarray(np.round(out).clip(0, 255).astype(np.uint8))


@dataclass
class Rendering:
    """What :func:`render` drew, and the per-token facts it drew from."""

    image: Image.Image
    tokens: TokenMap
    """The row's images side by side, and every visual token's box."""
    status: np.ndarray
    cluster_of: np.ndarray
    counts: dict[str, int]


def render(
    handle: Any, batch: dict[str, Tensor], row: int = 0, scale: int | None = None
) -> Rendering:
    """Overlay of the last reducing forward of ``handle`` on the images of ``row`` of ``batch``.

    ``batch`` is what the model was called with (input ids, pixel values, grids); ``scale``
    defaults to the smallest integer that makes the picture at least 256 px high.
    """
    assignment = handle.last_assignment
    if assignment is None:
        raise ValueError("the handle has no reducing forward yet: call the model first")
    ids = batch["input_ids"]
    if tuple(assignment.shape) != tuple(ids.shape):
        raise ValueError(
            f"the last reducing forward had shape {tuple(assignment.shape)}, this batch "
            f"{tuple(ids.shape)}: render the batch that forward was given"
        )
    geometry = Geometry.from_model(handle.model)
    maps = token_maps(geometry, batch, row)
    if not maps:
        raise ValueError(f"row {row} holds no image")
    tokens = _concatenate(maps)
    slots = torch.nonzero(ids[row] == geometry.image_token_id).flatten()
    status, cluster_of = token_status(assignment[row], slots)
    scale = scale or max(1, math.ceil(256 / tokens.image.shape[0]))
    image = overlay(tokens.image, tokens.boxes, status, cluster_of, scale)
    return Rendering(image, tokens, status, cluster_of, summarise(status, cluster_of))


def _concatenate(maps: list[TokenMap]) -> TokenMap:
    """Several images' token maps side by side, boxes shifted to their panel."""
    boxes: list[Box | None] = []
    x = 0
    for token_map in maps:
        for box in token_map.boxes:
            boxes.append(None if box is None else (box[0] + x, box[1], box[2] + x, box[3]))
        x += token_map.image.shape[1] + GAP
    return TokenMap(_side_by_side([m.image for m in maps]), boxes)


def summarise(status: np.ndarray, cluster_of: np.ndarray) -> dict[str, int]:
    """Counts of the visual tokens by status, and of merged clusters."""
    merged = status == MERGED
    return {
        "visual_tokens": int(status.size),
        "pruned": int((status == PRUNED).sum()),
        "kept_alone": int((status == KEPT).sum()),
        "merged": int(merged.sum()),
        "clusters": len(set(cluster_of[merged].tolist())),
    }

