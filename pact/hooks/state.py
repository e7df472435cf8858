"""Per-call and per-cache state of a hooked model.

A *session* lives as long as the KV cache it describes (it is keyed by the cache object), so
generation steps and later turns find the sizes and validity of the reduced keys, and the
state vanishes with the cache. A *call* lives for one top-level forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from pact.hooks.attention import ReducedAttention
from pact.tensors import ReductionStats


@dataclass
class StageKeys:
    """The keys that the layers of one stage hold in the cache (reduced length)."""

    valid: Tensor
    """``[B, KV]`` bool."""
    sizes: Tensor
    """``[B, KV]`` float32."""
    positions: Tensor | None = None
    """``[B, KV]`` long: each key's index in the unreduced cache (what sliding windows are
    measured in); None unless the model has sliding-window layers from this stage on."""
    position_shift: Tensor | None = None
    """``[B]`` how far renumbered positions lie behind the original ones (renumber mode)."""


@dataclass
class Session:
    """What one KV cache holds beyond its tensors: per stage, the reduced keys' bookkeeping."""

    stages: dict[int, StageKeys] = field(default_factory=dict)
    full_length: int = 0
    """Tokens seen in the original numbering (what an unreduced layer-0 cache would hold)."""
    reduced: bool = False
    """Whether a stage ran on this cache's tokens (then only pact can continue it)."""


@dataclass
class View:
    """What the layers from the current stage on see in this call."""

    position_embeddings: tuple[Tensor, Tensor]
    position_ids: Tensor | None
    rope_positions: Tensor | None
    """Positions the rotary embedding was computed from (``[B, N]`` or ``[3, B, N]``)."""
    visual: Tensor
    valid: Tensor
    sizes: Tensor
    attention: ReducedAttention | None = None
    slots: Tensor | None = None
    """``[B, M]`` index in this call's original sequence of each token (None: unreduced)."""
    slot_mask: Tensor | None = None
    """``[B, M]`` False at the row padding that reductions added."""


@dataclass
class Call:
    """One top-level forward."""

    input_ids: Tensor | None
    attention_mask: Tensor | None
    visual_mask: Tensor | None
    """Explicit mask from ``handle.set_visual_mask`` (generic path)."""
    rope_positions: Tensor | None = None
    length: int = 0
    """Tokens in this call's sequence before any reduction."""
    session: Session | None = None
    view: View | None = None
    stats: list[ReductionStats] = field(default_factory=list)
    assignments: list[Tensor] = field(default_factory=list)
    """Per reducing stage, ``[B, length]``: see :func:`compose_assignment`."""
    tower: Any = None
    """A vision stage's capture of its tower layer (:class:`pact.hooks.towers.Captured`)."""
    grid_thw: Tensor | None = None
    """Qwen-VL: the image grid the tower ran on."""
    image_arguments: dict | None = None
    """Any-resolution LLaVA: what ``get_image_features`` was called with."""
    vision_plan: Any = None
    """What the vision stage decided (:class:`pact.hooks.vision.VisionPlan`), for layer 0."""


def gather_tokens(tensor: Tensor | None, slots: Tensor, token_dim: int) -> Tensor | None:
    """``tensor`` at ``slots`` ``[B, M]`` along ``token_dim``, batch at ``token_dim - 1``.

    Leading broadcast batch dims of size 1 are expanded first (cos/sin often come as
    ``[1, N, d]``; M-RoPE positions as ``[3, B, N]``).
    """
    if tensor is None:
        return None
    token_dim = token_dim % tensor.dim()
    batch_dim = token_dim - 1
    shape = list(tensor.shape)
    shape[batch_dim] = slots.shape[0]
    tensor = tensor.expand(shape)
    index_shape = [1] * tensor.dim()
    index_shape[batch_dim], index_shape[token_dim] = slots.shape
    index = slots.to(tensor.device).view(index_shape)
    target = list(tensor.shape)
    target[token_dim] = slots.shape[1]
    return tensor.gather(token_dim, index.expand(target))


def rope_to_pipeline(rope_positions: Tensor, batch: int) -> Tensor:
    """``[B, N]`` or ``[3, B, N]`` rotary positions -> the pipeline's ``[B, N, C]``."""
    if rope_positions.dim() == 2:
        return rope_positions.expand(batch, -1)[..., None]
    return rope_positions.expand(-1, batch, -1).permute(1, 2, 0)


def pipeline_to_rope(positions: Tensor, like: Tensor) -> Tensor:
    """Inverse of :func:`rope_to_pipeline`, in ``like``'s layout."""
    if like.dim() == 2:
        return positions[..., 0]
    return positions.permute(2, 0, 1)


def append_keys(
    previous: StageKeys | None, valid: Tensor, sizes: Tensor, positions: Tensor | None = None
) -> StageKeys:
    """The stage's cache after this chunk: earlier keys, then the chunk's."""
    if previous is None:
        return StageKeys(valid=valid, sizes=sizes.float(), positions=positions)
    device = previous.valid.device
    if positions is not None and previous.positions is not None:
        positions = torch.cat([previous.positions, positions.to(device)], dim=1)
    return StageKeys(
        valid=torch.cat([previous.valid, valid.to(device)], dim=1),
        sizes=torch.cat([previous.sizes, sizes.float().to(device)], dim=1),
        positions=positions,
        position_shift=previous.position_shift,
    )


def compose_slots(view: View, kept_slots: Tensor, kept_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Original-sequence index and row-padding mask of each token a further reduction keeps."""
    if view.slots is None:
        return kept_slots, kept_mask
    return view.slots.gather(1, kept_slots), view.slot_mask.gather(1, kept_slots) & kept_mask


def restore_length(hidden: Tensor, slots: Tensor, kept: Tensor, length: int) -> Tensor:
    """``[B, M, D]`` outputs back at ``length`` original positions.

    A removed token's position repeats the output of the nearest surviving token before it:
    shapes match the unreduced model, and every surviving (e.g. text) position holds its own
    output.
    """
    batch, reduced = slots.shape
    # One spare column receives the row padding, so no two writes land on one index.
    source = torch.full((batch, length + 1), -1, dtype=torch.long, device=hidden.device)
    order = torch.arange(reduced, device=hidden.device).expand(batch, -1)
    source.scatter_(1, torch.where(kept, slots, length), order)
    source = torch.cummax(source[:, :length], dim=1).values.clamp(min=0)
    return hidden.gather(1, source[..., None].expand(-1, -1, hidden.shape[-1]))


def compose_assignment(
    previous: Tensor | None, view: View, assignment: Tensor, length: int
) -> Tensor:
    """``[B, length]``: the original slot of the token each original token now lives in.

    ``assignment`` (``Reduction.assignment``) is in the slots of the stage's input, whose
    original slots ``view.slots`` gives; ``previous`` is the same answer after the earlier
    stages (None: this is the first reducing stage). -1 marks removed tokens.
    """
    batch, tokens = assignment.shape
    device = assignment.device
    if view.slots is None:  # first reduction of the call: input slots are original slots
        original = torch.arange(tokens, device=device).expand(batch, -1)
        real = torch.ones(batch, tokens, dtype=torch.bool, device=device)
    else:
        original, real = view.slots.to(device), view.slot_mask.to(device)
    target = torch.where(assignment >= 0, original.gather(1, assignment.clamp(min=0)), -1)
    # Old original slot -> new one; row padding writes to a spare last column.
    table = torch.full((batch, length + 1), -1, dtype=torch.long, device=device)
    table.scatter_(1, torch.where(real, original, length), target)
    if previous is None:
        return table[:, :length]
    previous = previous.to(device)
    moved = table.gather(1, torch.where(previous >= 0, previous, length))
    return torch.where(previous >= 0, moved, -1)
