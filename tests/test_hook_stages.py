"""Several stages: each reduces what the previous one left, and sizes accumulate.

A merged token's size is the number of original tokens it stands for, so after any number
of stages the sizes of the visual tokens must add up to the original visual tokens that
were kept or merged (all of them when nothing is dropped). Read at a later layer through
the ``pact_attention`` kwarg that layer is handed and through the handle's call view.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager

import pytest
import torch
from helpers_hook import ROWS, cache_lengths, cache_of, greedy, make_batches, tiny_model

import pact
from pact.hooks.attention import KWARG
from pact.presets import preset_dict

pytestmark = pytest.mark.usefixtures("single_thread")

NEW = 3


@contextmanager
def sizes_at(handle, index: int):
    """Per row, at decoder layer ``index``: (sum of sizes over all valid keys from the
    attention kwarg, sum of sizes over visual tokens from the call's view)."""
    seen: list[tuple[list[float], list[float]]] = []

    def hook(module, args, kwargs):
        reduced = kwargs[KWARG]
        hidden = args[0] if args else kwargs["hidden_states"]
        if reduced.log_sizes is None or hidden.shape[1] == 1:
            return  # decoding steps
        sizes = reduced.log_sizes.exp() * reduced.key_valid
        view = handle._call.view
        visual = (view.sizes * (view.visual & view.valid)).sum(1)
        seen.append((sizes.sum(1).tolist(), visual.tolist()))

    layer = handle.model.get_decoder().layers[index]
    hook_handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        hook_handle.remove()


def pact_at(layers: list[int], **changes) -> dict:
    """PACT's stage repeated at ``layers``, with ``changes`` applied to every stage."""
    stage = preset_dict("pact")["stages"][0]
    return {"stages": [{**stage, "layer": layer, **changes} for layer in layers]}


def assert_chained(stats) -> None:
    """Each stage reduces exactly what the previous one left."""
    for previous, current in itertools.pairwise(stats):
        assert current.visual_in == previous.after_merge


def test_tome_eight_stages_from_layer_zero():
    tiny = tiny_model("llava_onevision", "llama")
    batch = make_batches(tiny, ROWS, "left").batch
    real = batch["attention_mask"].sum(1).tolist()
    visual = tiny.visual_mask(batch).sum(1).tolist()
    with pact.attached(tiny.model, "tome") as handle, sizes_at(handle, 7) as seen:
        out = greedy(tiny, batch, NEW)
        stats = handle.stats.last
    assert len(stats) == 8 and [s.visual_in for s in stats[:1]] == [visual]
    assert_chained(stats)
    for stage in stats:  # each stage merges floor(10%) of the tokens it is given
        for n, kept in zip(stage.visual_in, stage.after_merge, strict=True):
            assert kept == n - int(0.1 * n)
    # ToMe drops nothing: every original token (text included) is still counted once.
    ((all_keys, visual_sizes),) = seen
    assert all_keys == pytest.approx(real, abs=1e-3)
    assert visual_sizes == pytest.approx(visual, abs=1e-3)
    assert handle.stats.visual_in == sum(visual)
    assert handle.stats.visual_out == sum(stats[-1].after_merge)
    # Layer k's cache holds what stage k left, padded to the longest row.
    width = batch["input_ids"].shape[1]
    removed = [min(v - kept for v, kept in zip(visual, s.after_merge, strict=True)) for s in stats]
    assert cache_lengths(cache_of(out)) == [width - r + NEW - 1 for r in removed]


@pytest.mark.parametrize(("family", "text"), [("llava", "qwen2"), ("qwen2_5_vl", "qwen2")])
def test_pact_at_two_layers_nothing_dropped(family, text):
    """Retrieval radius beyond any cosine distance (alpha x cutoff > 2): every pruned token
    joins a cluster, so the sizes after both stages add up to all visual tokens."""
    tiny = tiny_model(family, text)
    batch = make_batches(tiny, ROWS, "left").batch
    visual = tiny.visual_mask(batch).sum(1).tolist()
    with (
        pact.attached(tiny.model, pact_at([2, 5], alpha=10.0)) as handle,
        sizes_at(handle, 4) as between,
        sizes_at(handle, 7) as after,
    ):
        out = greedy(tiny, batch, NEW)
        stats = handle.stats.last
    assert len(stats) == 2
    assert_chained(stats)
    first = stats[0]
    assert [n - p for n, p in zip(visual, first.after_prune, strict=True)] == first.retrieved
    assert between[0][1] == pytest.approx(visual, abs=1e-3)
    assert after[0][1] == pytest.approx(visual, abs=1e-3)
    assert sum(stats[-1].after_merge) < sum(stats[0].after_merge) < sum(visual)
    # Layers 0-1 full, 2-4 reduced once, 5-7 reduced twice.
    width = batch["input_ids"].shape[1]
    once = width - min(v - k for v, k in zip(visual, stats[0].after_merge, strict=True))
    twice = width - min(v - k for v, k in zip(visual, stats[1].after_merge, strict=True))
    lengths = [width] * 2 + [once] * 3 + [twice] * 3
    assert cache_lengths(cache_of(out)) == [length + NEW - 1 for length in lengths]


def test_pact_at_two_layers_with_dropping():
    """PACT's own retrieval radius: tokens pruned and not retrieved leave for good, so the
    sizes after stage 1 count exactly the kept and retrieved ones, and only fall after."""
    tiny = tiny_model("llava_next", "qwen2")
    batch = make_batches(tiny, ROWS, "left").batch
    visual = tiny.visual_mask(batch).sum(1).tolist()
    with (
        pact.attached(tiny.model, pact_at([2, 5])) as handle,
        sizes_at(handle, 4) as between,
        sizes_at(handle, 7) as after,
        torch.no_grad(),
    ):
        tiny.model(**batch, position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0))
        first, second = handle.stats.last
    assert_chained([first, second])
    represented = [p + r for p, r in zip(first.after_prune, first.retrieved, strict=True)]
    assert represented[0] < visual[0]  # something was dropped
    assert between[0][1] == pytest.approx(represented, abs=1e-3)
    for row, total in enumerate(after[0][1]):
        assert second.after_merge[row] <= total <= represented[row] + 1e-3
    # The attention of every layer sees the same tokens: text once each, visual by size.
    text = [r - v for r, v in zip(batch["attention_mask"].sum(1).tolist(), visual, strict=True)]
    assert after[0][0] == pytest.approx([t + s for t, s in zip(text, after[0][1], strict=True)])
