"""Generation with the KV cache: reduced cache lengths, positions of new tokens, later turns.

The independent references are the unreduced model (positions of new tokens), the same
hooked model decoding without a cache (every step a fresh prefill, which reduces the same
visual tokens the same way), and one prefill over a whole conversation.
"""

from __future__ import annotations

import pytest
import torch
from helpers_hook import (
    CACHE,
    QWEN_VL,
    REPRESENTATIVE,
    TOL,
    cache_lengths,
    cache_of,
    greedy,
    make_batches,
    rope_probe,
    tiny_model,
)

import pact

pytestmark = pytest.mark.usefixtures("single_thread")

NEW = 4
ONE_ROW = [["text:3", "image", "text:4"]]
TWO_ROWS = [["text:3", "image", "text:4"], ["text:2", "image", "image", "text:6"]]


def removed_per_row(stats) -> list[int]:
    """Visual tokens that the (single) stage removed from each row."""
    return [n - kept for n, kept in zip(stats[0].visual_in, stats[-1].after_merge, strict=True)]


@pytest.mark.parametrize("rows", [ONE_ROW, TWO_ROWS], ids=["one_row", "two_rows"])
@pytest.mark.parametrize(("family", "text"), REPRESENTATIVE)
def test_generate_cache_lengths_and_positions(family, text, rows):
    tiny = tiny_model(family, text)
    batch = make_batches(tiny, rows, "left").batch
    width = batch["input_ids"].shape[1]
    with rope_probe(tiny.model) as reference_positions:
        greedy(tiny, batch, NEW)
    with pact.attached(tiny.model, "pact") as handle:
        with rope_probe(tiny.model) as positions:
            cached = greedy(tiny, batch, NEW)
        removed = removed_per_row(handle.stats.last)
        uncached = greedy(tiny, batch, NEW, use_cache=False)
    layer = handle.config.stages[0].layer
    # Runs to completion.
    assert cached.sequences.shape == (len(rows), width + NEW)
    # Full length below the stage, reduced (to the longest reduced row) from it on; the
    # last generated token is never fed back, hence NEW - 1.
    assert min(removed) > 0
    reduced = width - min(removed)
    expected = [width + NEW - 1] * layer + [reduced + NEW - 1] * (8 - layer)
    assert cache_lengths(cache_of(cached)) == expected
    # New tokens continue the original numbering: the unreduced model's positions exactly.
    assert len(positions) == len(reference_positions) == NEW
    for step in range(1, NEW):
        assert torch.equal(positions[step], reference_positions[step])
    # Decoding over the reduced cache (sizes and masks carried between steps) gives what
    # re-running the whole reduced prefill at every step gives.
    assert torch.equal(cached.sequences, uncached.sequences)
    for step in range(NEW):
        assert (cached.logits[step] - uncached.logits[step]).abs().max() <= TOL


def test_stage_at_layer_zero_keeps_original_positions():
    """tome reduces at layer 0, whose cache length the model reads to number new tokens."""
    tiny = tiny_model("llava", "llama")
    batch = make_batches(tiny, ONE_ROW, "left").batch
    width = batch["input_ids"].shape[1]
    with rope_probe(tiny.model) as reference_positions:
        greedy(tiny, batch, NEW)
    with pact.attached(tiny.model, "tome") as handle:
        with rope_probe(tiny.model) as positions:
            out = greedy(tiny, batch, NEW)
        first = handle.stats.last[0]
        assert cache_of(out).get_seq_length() == width + NEW - 1  # the original length
    held = width - (first.visual_in[0] - first.after_merge[0]) + 3
    assert first.after_merge[0] < first.visual_in[0]
    assert cache_lengths(cache_of(out))[0] == held
    assert cache_of(out).get_seq_length() == held  # detached: the cache's own answer again
    for step in range(1, NEW):
        assert torch.equal(positions[step], reference_positions[step])


def text_continuation(tiny, first: dict, extra: int, seed: int = 7) -> dict:
    """``first`` (one row) followed by ``extra`` ordinary text tokens, as one prefill."""
    low, high = tiny.layout.text_ids
    more = torch.randint(low, high, (1, extra), generator=torch.Generator().manual_seed(seed))
    whole = dict(first)
    whole["input_ids"] = torch.cat([first["input_ids"], more], dim=1)
    whole["attention_mask"] = torch.ones_like(whole["input_ids"])
    if "mm_token_type_ids" in first:
        zeros = torch.zeros_like(more)
        whole["mm_token_type_ids"] = torch.cat([first["mm_token_type_ids"], zeros], dim=1)
    return whole


@pytest.mark.parametrize(("family", "text"), [("llava_onevision", "qwen2"), ("qwen2_vl", "qwen2")])
def test_second_turn_text_continues_the_cache(family, text):
    """A multi-token text turn on a reduced cache equals one prefill of the whole dialogue
    (text after the image changes neither EUTI's prefix nor the clustered keys)."""
    tiny = tiny_model(family, text)
    first = make_batches(tiny, ONE_ROW, "left").batch
    whole = text_continuation(tiny, first, extra=6)
    width = first["input_ids"].shape[1]
    # A full-length mask (the usual form with a cache) where the model allows it: Qwen2-VL's
    # own 3-D positions take its length for the chunk's (a transformers limitation).
    mask = {} if family in QWEN_VL else {"attention_mask": whole["attention_mask"]}
    with pact.attached(tiny.model, "pact") as handle, torch.no_grad():
        turn1 = tiny.model(**first, use_cache=True)
        lengths1 = cache_lengths(cache_of(turn1))
        new_ids = whole["input_ids"][:, width:]
        turn2 = tiny.model(input_ids=new_ids, **{CACHE: cache_of(turn1)}, use_cache=True, **mask)
        lengths2 = cache_lengths(cache_of(turn2))
        assert handle.stats.calls == 1  # a text-only turn reduces nothing
        reference = tiny.model(**whole).logits
    assert [b - a for a, b in zip(lengths1, lengths2, strict=True)] == [6] * 8
    assert (turn2.logits - reference[:, width:]).abs().max() <= TOL


@pytest.mark.parametrize(("family", "text"), [("llava", "qwen2"), ("qwen2_vl", "qwen2")])
def test_second_turn_with_a_new_image(family, text):
    """A turn with a new image on the same cache: reduced by the stage, cache grows by
    what the stats say, positions continue as in the unreduced model."""
    tiny = tiny_model(family, text)
    first = make_batches(tiny, ONE_ROW, "left", seed=0).batch
    second = make_batches(tiny, [["text:2", "image", "text:3"]], "left", seed=1).batch
    second.pop("attention_mask")
    n1, n2 = first["input_ids"].shape[1], second["input_ids"].shape[1]

    def two_turns():
        with torch.no_grad(), rope_probe(tiny.model) as positions:
            turn1 = tiny.model(**first, use_cache=True)
            lengths1 = cache_lengths(cache_of(turn1))
            turn2 = tiny.model(**second, **{CACHE: cache_of(turn1)}, use_cache=True)
        return turn2, lengths1, cache_lengths(cache_of(turn2)), positions

    reference, *_, reference_positions = two_turns()
    with pact.attached(tiny.model, "pact") as handle:
        turn2, lengths1, lengths2, positions = two_turns()
        stats = handle.stats
    layer = handle.config.stages[0].layer
    removed = stats.last[0].visual_in[0] - stats.last[-1].after_merge[0]
    assert stats.calls == 2  # both turns reduced their image
    assert stats.last[0].visual_in == tiny.visual_mask(second).sum(1).tolist()
    assert removed > 0
    growth = [b - a for a, b in zip(lengths1, lengths2, strict=True)]
    assert growth == [n2] * layer + [n2 - removed] * (8 - layer)
    assert lengths2[:layer] == [n1 + n2] * layer
    assert turn2.logits.shape == reference.logits.shape
    assert not torch.allclose(turn2.logits, reference.logits, atol=1e-3)
    assert len(positions) == len(reference_positions) == 2
    assert torch.equal(positions[1], reference_positions[1])
