"""What pact does to the transformers KV caches a hooked model fills.

pact works on transformers' ``DynamicCache``: layers from the first stage on hold the
reduced sequence, and pact's bookkeeping (:class:`pact.hooks.state.Session`) says what
each of their keys stands for. Everything here is about keeping a cache and that
bookkeeping in step: caches pact cannot follow are refused before any model work, and a
cache that holds reduced keys is sealed when pact is detached, since the stock model
could only misread it.
"""

from __future__ import annotations

from typing import Any

from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from pact.hooks.state import Session

_SEALED = (
    "this KV cache holds tokens that pact reduced, and pact has been detached from the "
    "model that filled it: the stock model cannot continue it (its keys, sizes and "
    "positions no longer line up). Start a new cache, or continue this one before "
    "calling detach()"
)


def cache_of(kwargs: dict[str, Any]) -> Any:
    """The cache a forward was given (transformers 5.x renamed ``past_key_values``)."""
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache


def check_supported(cache: Any) -> None:
    """Refuse, before any model work, a cache whose layers pact cannot follow.

    A static cache preallocates every layer at the unreduced length and writes new keys at
    ``cache_position``; the reduced layers' keys would land at the wrong slots.
    """
    if cache is None:
        return
    layers = getattr(cache, "layers", None)
    plain = isinstance(cache, DynamicCache) and all(
        type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers or ()
    )
    if not plain:
        kinds = ", ".join(sorted({type(layer).__name__ for layer in layers or ()}))
        raise ValueError(
            f"pact reduces the KV cache of a DynamicCache only; this call's cache is a "
            f"{type(cache).__name__}{f' of {kinds}' if kinds else ''}. Use the "
            "default cache (no cache_implementation='static' in generate, no StaticCache), "
            "or detach pact"
        )


def check_implementation(implementation: str | None) -> None:
    """Refuse a ``generate(cache_implementation=...)`` that builds a cache pact cannot follow."""
    if implementation not in (None, "dynamic"):
        raise ValueError(
            f"pact reduces the KV cache of a DynamicCache only; generate(cache_implementation="
            f"{implementation!r}) builds another kind. Leave cache_implementation unset (or "
            "'dynamic'), or detach pact"
        )


def check_length(cache: Any, index: int, expected: int) -> None:
    """The cache must hold what pact recorded: a cropped or foreign cache is an error."""
    if cache is None or not hasattr(cache, "layers") or index >= len(cache.layers):
        return
    held = cache.layers[index].get_seq_length()
    if held != expected:
        raise RuntimeError(
            f"the KV cache of layer {index} holds {held} tokens but pact recorded {expected}: "
            "the cache was changed outside pact (cropped, or filled by another model); start a "
            "new cache"
        )


def keep_whole_windows(cache: Any, first: int) -> None:
    """Make the sliding-window layers from ``first`` on keep every key they are given.

    A sliding layer of a ``DynamicCache`` keeps its last ``window - 1`` entries. Reduced
    rows are padded at their end, so in a batch those entries would count padding, and a
    row could lose keys that its window (measured in original positions) still covers;
    kept whole, the window is applied by pact's mask alone.
    """
    layers = getattr(cache, "layers", None) or []
    for index in range(first, len(layers)):
        layer = layers[index]
        if isinstance(layer, DynamicSlidingWindowLayer) and not layer.is_initialized:
            layers[index] = DynamicLayer()


def report_full_length(cache: Any, session: Session) -> None:
    """Make ``cache.get_seq_length()`` report the original length when layer 0 is reduced.

    Models derive the positions of new tokens from layer 0's cache length; a stage at
    layer 0 shortens it, so this cache (and only it) answers with the unreduced length.
    """
    stock = cache.get_seq_length

    def get_seq_length(layer_idx: int = 0, *args, **kwargs) -> int:
        if layer_idx == 0:
            return session.full_length
        return stock(layer_idx, *args, **kwargs)

    cache.get_seq_length = get_seq_length


def release(cache: Any, session: Session) -> None:
    """At detach: give ``cache`` back its own methods; seal it if it holds reduced keys.

    Sealed, the cache still answers questions (``get_seq_length`` then counts what layer 0
    holds), but any forward that would add to it fails at its first layer.
    """
    cache.__dict__.pop("get_seq_length", None)
    if not session.reduced:
        return

    def sealed(*args, **kwargs):
        raise RuntimeError(_SEALED)

    cache.update = sealed
