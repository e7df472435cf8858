"""How the sequence that later layers see changes when a stage reduces it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pact.hooks.state import View, compose_slots, gather_tokens, pipeline_to_rope
from pact.tensors import Reduction

Rotary = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""The decoder's ``rotary_emb(hidden, position_ids) -> (cos, sin)``."""


def reduced_view(
    view: View, reduction: Reduction, mode: str, rotary: Rotary | None
) -> tuple[View, Tensor | None]:
    """The view after ``reduction``, and (renumber mode) how far positions moved back.

    ``keep`` gathers cos/sin at the kept slots, which keeps every original position (M-RoPE
    included) with no model-specific code; other modes recompute them with ``rotary``.
    """
    slots = reduction.kept_slots
    valid = view.valid.gather(1, slots) & reduction.kept_mask
    rope = gather_tokens(view.rope_positions, slots, -1)
    shift = None
    if mode == "keep":
        cos, sin = view.position_embeddings
        embeddings = (gather_tokens(cos, slots, 1), gather_tokens(sin, slots, 1))
    else:
        assert rotary is not None and view.rope_positions is not None
        rope = pipeline_to_rope(reduction.positions, view.rope_positions)
        embeddings = rotary(reduction.hidden, rope)
        if mode == "renumber":
            shift = max_position(view.rope_positions, view.valid) - max_position(rope, valid)
    original_slots, slot_mask = compose_slots(view, slots, reduction.kept_mask)
    new_view = View(
        position_embeddings=embeddings,
        position_ids=gather_tokens(view.position_ids, slots, -1) if mode == "keep" else None,
        rope_positions=rope,
        visual=reduction.visual_mask,
        valid=valid,
        sizes=reduction.sizes,
        slots=original_slots,
        slot_mask=slot_mask,
    )
    return new_view, shift


def shifted_view(view: View, shift: Tensor, hidden: Tensor, rotary: Rotary) -> View:
    """Decoding after a renumbered prefix: new tokens continue the renumbered positions."""
    rope, batch = view.rope_positions, shift.numel()
    shift = shift.to(rope.device)
    if rope.dim() == 2:
        rope = rope.expand(batch, -1) - shift.view(-1, 1)
    else:
        rope = rope.expand(-1, batch, -1) - shift.view(1, -1, 1)
    return View(
        rotary(hidden, rope), None, rope, view.visual, view.valid, view.sizes, None,
        view.slots, view.slot_mask,
    )  # fmt: skip


def max_position(positions: Tensor, valid: Tensor) -> Tensor:
    """``[B]`` largest position of a real token, over all rotary components."""
    per_token = positions if positions.dim() == 2 else positions.amax(dim=0)
    per_token = per_token.expand(valid.shape[0], -1)
    return torch.where(valid, per_token, torch.zeros_like(per_token)).amax(dim=1)


def view_to(view: View, device: torch.device) -> View:
    """The view with its tensors on ``device`` (models split over devices)."""
    if view.visual.device == device:
        return view
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    cos, sin = view.position_embeddings
    return View(
        (move(cos), move(sin)),
        move(view.position_ids),
        move(view.rope_positions),
        move(view.visual),
        move(view.valid),
        move(view.sizes),
        view.attention,
        move(view.slots),
        move(view.slot_mask),
    )
