"""Checks of what a user hands the hook, made before any model work.

``attach`` checks its arguments before it changes the model; the model's forward pre-hook
checks each call before the vision tower or any layer runs.
"""

from __future__ import annotations

import numbers
from typing import Any

from torch import Tensor, nn


def checked_token_ids(ids: Any, model: nn.Module) -> list[int]:
    """``visual_token_ids`` as a list of ints, each an id of the model's vocabulary."""
    if isinstance(ids, Tensor):
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == bool:
            raise TypeError(
                f"visual_token_ids must hold integer token ids; got a {ids.dtype} tensor"
            )
        ids = ids.flatten().tolist()
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise TypeError(
            f"visual_token_ids must be a list of integer token ids; got {type(ids).__name__} "
            f"{ids!r}"
        )
    ids = list(ids)
    wrong = [i for i in ids if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
    if wrong:
        raise TypeError(f"visual_token_ids must be integer token ids; got {wrong[0]!r}")
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None)
    outside = [i for i in ids if i < 0 or (vocab is not None and i >= vocab)]
    if outside:
        allowed = f"0..{vocab - 1}" if vocab is not None else "non-negative"
        raise ValueError(
            f"visual_token_ids: {outside[0]} is not a token id of this model ({allowed})"
        )
    return [int(i) for i in ids]


def check_call(
    input_ids: Tensor | None, inputs_embeds: Any, mask: Tensor | None, by_ids: bool
) -> None:
    """A forward's inputs must tell pact where its visual tokens are.

    ``mask``: the pending ``set_visual_mask``; ``by_ids``: the model's visual tokens are
    found from ``input_ids``.
    """
    embeds = inputs_embeds if isinstance(inputs_embeds, Tensor) else None
    shape = None
    if embeds is not None:
        shape = tuple(embeds.shape[:2])
    elif input_ids is not None:
        shape = tuple(input_ids.shape)
    if mask is not None:
        if shape is not None and tuple(mask.shape) != shape:
            raise ValueError(
                f"set_visual_mask: mask shape {tuple(mask.shape)} does not match the "
                f"sequence {shape} of this forward"
            )
        return
    mismatched = input_ids is None or input_ids.shape[-1] != shape[1] if shape else False
    if by_ids and embeds is not None and mismatched:
        got = "none" if input_ids is None else tuple(input_ids.shape)
        raise ValueError(
            f"pact finds visual tokens from input_ids; this call gave inputs_embeds "
            f"{shape} and input_ids {got}: pass input_ids, or mark the visual tokens "
            "with handle.set_visual_mask before the forward"
        )
