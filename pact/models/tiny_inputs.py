"""Hand-built batches (token ids, pixels, grids) for the tiny VLMs of :mod:`pact.models.tiny`.

A batch is described row by row; each row is a list of items:

* ``"text:N"``: N random ordinary token ids;
* ``"image"`` or ``"image:HxW"``: one image of the default size, or of H x W pixels;
* ``"video"``, ``"video:F"`` or ``"video:FxHxW"``: one video of F frames.

Every image or video becomes exactly as many placeholder tokens as the family's
transformers processor inserts (Qwen-VL items are also wrapped in the
``vision_start`` / ``vision_end`` tokens its chat template writes), together with
the pixel tensors and metadata the model's ``forward`` expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers.image_processing_utils import select_best_resolution

from pact.hooks.families import families_with

ANYRES_FAMILIES = families_with(tiny=True, grid="anyres")
QWEN_FAMILIES = families_with(tiny=True, grid="merged")
VIDEO_FAMILIES = families_with(tiny=True, video=True)
TEXT_TYPE, IMAGE_TYPE, VIDEO_TYPE = 0, 1, 2  # values of Qwen-VL's mm_token_type_ids
QWEN_VIDEO_FPS = 2.0  # sampling rate assumed for Qwen2.5-VL's second_per_grid_ts
ITEM_ARITY = {"text": (1,), "image": (0, 2), "video": (0, 1, 3)}


@dataclass(frozen=True)
class Layout:
    """Geometry and special token ids that turn row specs into inputs for one tiny model."""

    family: str
    tile: int  # side (px) of the square the llava-style vision tower sees
    patch: int  # side (px) of one vision patch
    image_hw: tuple[int, int]  # default image size (h, w) in px
    frames: int  # default number of video frames
    image_id: int
    video_id: int | None
    text_ids: tuple[int, int]  # ordinary token ids are drawn from [lo, hi)
    wrap_ids: tuple[int, int] | None = None  # (vision_start, vision_end) for Qwen-VL
    pinpoints: tuple[tuple[int, int], ...] = ()  # any-resolution canvases (h, w)
    pad_id: int = 0
    merge: int = 2  # Qwen-VL spatial merge
    temporal: int = 2  # Qwen-VL temporal patch
    max_tiles: int = 9  # LLaVA-OneVision "anyres_max_9"
    dtype: torch.dtype = torch.float32

    @property
    def grid(self) -> int:
        """Patches per side of one tile."""
        return self.tile // self.patch


@dataclass
class Visual:
    """One image or video of a row: its placeholder count, pixels and metadata row."""

    kind: str
    tokens: int
    pixels: torch.Tensor
    meta: tuple[int, ...] | None = None  # image_sizes (h, w) or grid (t, h, w)


@dataclass
class Row:
    """Token ids, modality types and visuals of one unpadded row."""

    ids: list[int] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    visuals: list[Visual] = field(default_factory=list)

    def extend(self, ids: list[int], mm_type: int) -> None:
        """Append token ids that all share one modality type."""
        self.ids.extend(ids)
        self.types.extend([mm_type] * len(ids))


def parse_item(item: str) -> tuple[str, tuple[int, ...]]:
    """Split ``"kind:AxB"`` into ``("kind", (A, B))``, validating the kind and its numbers."""
    kind, _, arg = item.partition(":")
    try:
        numbers = tuple(int(part) for part in arg.split("x")) if arg else ()
    except ValueError:
        numbers = (-1,)
    arity_ok = kind in ITEM_ARITY and len(numbers) in ITEM_ARITY[kind]
    if not arity_ok or min(numbers, default=1) < 1:
        raise ValueError(
            f"bad prompt item {item!r}: expected 'text:N', 'image', 'image:HxW', "
            "'video', 'video:F' or 'video:FxHxW' with positive integers"
        )
    return kind, numbers


def anyres_tiles(layout: Layout, hw: tuple[int, int]) -> tuple[int, int]:
    """Tiles (rows, cols) of the canvas the any-resolution processor picks for an image."""
    best_h, best_w = select_best_resolution(hw, [list(p) for p in layout.pinpoints])
    return best_h // layout.tile, best_w // layout.tile


def anyres_feature_grid(layout: Layout, hw: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of tile features kept after unpadding (and OneVision's downscale)."""
    tiles_h, tiles_w = anyres_tiles(layout, hw)
    rows, cols = tiles_h * layout.grid, tiles_w * layout.grid
    height, width = hw
    if width / height > cols / rows:  # image wider than the canvas: padding rows dropped
        kept = int(round(height * (cols / width), 7))
        rows -= 2 * ((rows - kept) // 2)
    else:
        kept = int(round(width * (rows / height), 7))
        cols -= 2 * ((cols - kept) // 2)
    if layout.family == "llava_onevision":
        ratio = math.sqrt(rows * cols / (layout.max_tiles * layout.grid**2))
        if ratio > 1.1:
            rows, cols = int(rows // ratio), int(cols // ratio)
    return rows, cols


def anyres_tokens(layout: Layout, hw: tuple[int, int], multi_image: bool = False) -> int:
    """Placeholders of one any-resolution image: base tile + feature grid + a newline per row."""
    if multi_image:  # OneVision rows with several images keep only the base tile + newline
        return layout.grid**2 + 1
    rows, cols = anyres_feature_grid(layout, hw)
    return layout.grid**2 + rows * cols + rows


def qwen_grid(layout: Layout, hw: tuple[int, int], frames: int = 1) -> tuple[int, int, int]:
    """Qwen-VL ``grid_thw`` of an image or video, sides rounded to a multiple of patch*merge."""
    unit = layout.patch * layout.merge
    height, width = (max(unit, round(side / unit) * unit) for side in hw)
    return math.ceil(frames / layout.temporal), height // layout.patch, width // layout.patch


def image_token_count(layout: Layout, hw: tuple[int, int], multi_image: bool = False) -> int:
    """Placeholders the family's processor inserts for one image of size ``hw``."""
    if layout.family == "llava":
        return layout.grid**2
    if layout.family in ANYRES_FAMILIES:
        return anyres_tokens(layout, hw, multi_image and layout.family == "llava_onevision")
    return math.prod(qwen_grid(layout, hw)) // layout.merge**2


def video_token_count(layout: Layout, frames: int, hw: tuple[int, int]) -> int:
    """Placeholders the family's processor inserts for one video of ``frames`` frames."""
    if layout.family == "llava_onevision":  # frames pooled 2x2, plus one newline
        return frames * math.ceil(layout.grid / 2) ** 2 + 1
    if layout.family in QWEN_FAMILIES:
        return math.prod(qwen_grid(layout, hw, frames)) // layout.merge**2
    raise ValueError(f"family {layout.family!r} takes no video; video families: {VIDEO_FAMILIES}")


def image_visual(layout: Layout, hw: tuple[int, int], multi_image: bool, gen) -> Visual:
    """Placeholder count, pixels and metadata of one image for the layout's family."""
    tokens = image_token_count(layout, hw, multi_image)
    tile = (3, layout.tile, layout.tile)
    if layout.family == "llava":
        return Visual("image", tokens, _randn(tile, gen, layout))
    if layout.family in ANYRES_FAMILIES:
        base_only = multi_image and layout.family == "llava_onevision"
        n_tiles = 1 if base_only else math.prod(anyres_tiles(layout, hw)) + 1
        return Visual("image", tokens, _randn((n_tiles, *tile), gen, layout), tuple(hw))
    return _qwen_visual(layout, "image", qwen_grid(layout, hw), gen)


def video_visual(layout: Layout, frames: int, hw: tuple[int, int], gen) -> Visual:
    """Placeholder count, pixels and metadata of one video for the layout's family."""
    tokens = video_token_count(layout, frames, hw)
    if layout.family == "llava_onevision":
        pixels = _randn((frames, 3, layout.tile, layout.tile), gen, layout)
        return Visual("video", tokens, pixels)
    return _qwen_visual(layout, "video", qwen_grid(layout, hw, frames), gen)


def _qwen_visual(layout: Layout, kind: str, grid: tuple[int, int, int], gen) -> Visual:
    """Flattened Qwen-VL patches (one row per patch) for an image or video grid."""
    patch_dim = 3 * layout.temporal * layout.patch**2
    pixels = _randn((math.prod(grid), patch_dim), gen, layout)
    return Visual(kind, math.prod(grid) // layout.merge**2, pixels, grid)


def _randn(shape: tuple[int, ...], gen: torch.Generator, layout: Layout) -> torch.Tensor:
    """Normalised-pixel-like noise, reproducible through ``gen``."""
    return torch.randn(shape, generator=gen).to(layout.dtype)


def build_row(layout: Layout, spec: list[str], gen: torch.Generator) -> Row:
    """Token ids, modality types and visuals for one row spec."""
    items = [parse_item(item) for item in spec]
    n_images = sum(kind == "image" for kind, _ in items)
    row = Row()
    for kind, numbers in items:
        if kind == "text":
            ids = torch.randint(*layout.text_ids, (numbers[0],), generator=gen).tolist()
            row.extend(ids, TEXT_TYPE)
            continue
        if kind == "image":
            visual = image_visual(layout, numbers or layout.image_hw, n_images > 1, gen)
        else:
            frames = numbers[0] if numbers else layout.frames
            visual = video_visual(layout, frames, numbers[1:] or layout.image_hw, gen)
        _append_visual(layout, row, visual)
    return row


def _append_visual(layout: Layout, row: Row, visual: Visual) -> None:
    """Append a visual's placeholders (wrapped for Qwen-VL) to a row."""
    image = visual.kind == "image"
    token_id = layout.image_id if image else layout.video_id
    if layout.wrap_ids:
        row.extend([layout.wrap_ids[0]], TEXT_TYPE)
    row.extend([token_id] * visual.tokens, IMAGE_TYPE if image else VIDEO_TYPE)
    if layout.wrap_ids:
        row.extend([layout.wrap_ids[1]], TEXT_TYPE)
    row.visuals.append(visual)


def build_batch(
    layout: Layout, prompts: list[list[str]], padding_side: str = "left", seed: int = 0
) -> dict[str, torch.Tensor]:
    """Padded ``input_ids`` / ``attention_mask`` plus every vision input, all on CPU."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not prompts:
        raise ValueError("prompts must hold at least one row")
    gen = torch.Generator().manual_seed(seed)
    rows = [build_row(layout, list(spec), gen) for spec in prompts]
    batch = pad_rows(layout, rows, padding_side)
    batch.update(vision_tensors(layout, rows))
    return batch


def pad_rows(layout: Layout, rows: list[Row], padding_side: str) -> dict[str, torch.Tensor]:
    """Stack rows into ``input_ids``, ``attention_mask`` (and ``mm_token_type_ids`` for Qwen)."""
    width = max(len(row.ids) for row in rows)
    ids = torch.full((len(rows), width), layout.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        span = slice(width - len(row.ids), width) if padding_side == "left" else slice(len(row.ids))
        ids[index, span] = torch.tensor(row.ids, dtype=torch.long)
        mask[index, span] = 1
        types[index, span] = torch.tensor(row.types, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if layout.family in QWEN_FAMILIES and takes_token_types():
        batch["mm_token_type_ids"] = types
    return batch


def takes_token_types() -> bool:
    """Whether this transformers' Qwen-VL models take ``mm_token_type_ids`` (newer 5.x
    releases need it for M-RoPE; earlier ones find visual tokens from the ids alone)."""
    import inspect

    from transformers import Qwen2VLModel

    return "mm_token_type_ids" in inspect.signature(Qwen2VLModel.forward).parameters


def vision_tensors(layout: Layout, rows: list[Row]) -> dict[str, torch.Tensor]:
    """Collate the rows' images and videos into the family's forward kwargs."""
    images = [v for row in rows for v in row.visuals if v.kind == "image"]
    videos = [v for row in rows for v in row.visuals if v.kind == "video"]
    out: dict[str, torch.Tensor] = {}
    if layout.family in QWEN_FAMILIES:
        if images:
            out["pixel_values"] = torch.cat([v.pixels for v in images])
            out["image_grid_thw"] = torch.tensor([v.meta for v in images], dtype=torch.long)
        if videos:
            out["pixel_values_videos"] = torch.cat([v.pixels for v in videos])
            out["video_grid_thw"] = torch.tensor([v.meta for v in videos], dtype=torch.long)
        if videos and layout.family == "qwen2_5_vl":
            seconds = [layout.temporal / QWEN_VIDEO_FPS] * len(videos)
            out["second_per_grid_ts"] = torch.tensor(seconds)
        return out
    if images and layout.family == "llava":
        out["pixel_values"] = torch.stack([v.pixels for v in images])
    elif images:
        out["pixel_values"] = _pad_tiles([v.pixels for v in images])
        out["image_sizes"] = torch.tensor([v.meta for v in images], dtype=torch.long)
    if images and layout.family == "llava_onevision":
        counts = [sum(v.kind == "image" for v in row.visuals) for row in rows]
        out["batch_num_images"] = torch.tensor(counts, dtype=torch.long)
    if videos:
        if len({v.pixels.shape[0] for v in videos}) > 1:
            raise ValueError("llava_onevision videos of one batch must have the same frame count")
        out["pixel_values_videos"] = torch.stack([v.pixels for v in videos])
    return out


def _pad_tiles(tile_stacks: list[torch.Tensor]) -> torch.Tensor:
    """Zero-pad per-image tile stacks to a common count: ``[images, tiles, 3, H, W]``."""
    most = max(stack.shape[0] for stack in tile_stacks)
    out = tile_stacks[0].new_zeros((len(tile_stacks), most, *tile_stacks[0].shape[1:]))
    for index, stack in enumerate(tile_stacks):
        out[index, : stack.shape[0]] = stack
    return out


def visual_mask(layout: Layout, input_ids: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` bool mask of image and video placeholder positions."""
    ids = [layout.image_id] + ([layout.video_id] if layout.video_id is not None else [])
    return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))
