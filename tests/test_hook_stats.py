"""``handle.stats``: per-call and running counts that match the inputs, and state that
neither outlives a forward nor grows with the number of calls."""

from __future__ import annotations

import gc

import pytest
import torch
from helpers_hook import ROWS, all_hooks, logits, make_batches, tiny_model

import pact

pytestmark = pytest.mark.usefixtures("single_thread")


def test_stats_per_call_and_cumulative():
    tiny = tiny_model("llava_next", "gemma")
    first = make_batches(tiny, ROWS, "left").batch
    second = make_batches(tiny, [["text:2", "image", "text:2"]], "left", seed=3).batch
    visual_first = tiny.visual_mask(first).sum(1).tolist()
    visual_second = tiny.visual_mask(second).sum(1).tolist()
    with pact.attached(tiny.model, "pact") as handle:
        stats = handle.stats
        assert (stats.calls, stats.visual_in, stats.last, stats.reduction_ratio) == (0, 0, [], 0.0)
        logits(tiny, first)
        assert handle._call is None and handle._pending_mask is None
        (one,) = stats.last
        assert one.visual_in == visual_first
        assert all(
            k <= p + r
            for k, p, r in zip(one.after_merge, one.after_prune, one.retrieved, strict=True)
        )
        out_first = sum(one.after_merge)
        assert (stats.calls, stats.visual_in, stats.visual_out) == (1, sum(visual_first), out_first)
        assert stats.reduction_ratio == pytest.approx(1 - out_first / sum(visual_first))
        assert stats.seconds.total > 0 and min(vars(stats.seconds).values()) > 0
        seconds_first = stats.seconds.total

        logits(tiny, second)
        (two,) = stats.last
        assert two.visual_in == visual_second
        total_in = sum(visual_first) + sum(visual_second)
        total_out = out_first + sum(two.after_merge)
        assert (stats.calls, stats.visual_in, stats.visual_out) == (2, total_in, total_out)
        assert stats.seconds.total > seconds_first
        summary = stats.summary()
        assert summary["last_call"]["visual_in"] == visual_second
        assert summary["last_call"]["visual_out"] == two.after_merge
        assert summary["last_call"]["reduction_ratio"] == pytest.approx(
            1 - sum(two.after_merge) / sum(visual_second), abs=1e-4
        )
        assert summary["total"]["calls"] == 2
        assert summary["total"]["reduction_ratio"] == pytest.approx(
            1 - total_out / total_in, abs=1e-4
        )

        # A text-only forward and the decoding steps of generate reduce nothing.
        logits(tiny, make_batches(tiny, [["text:5"]], "left").batch)
        assert stats.calls == 2 and stats.last == [two]
        with torch.no_grad():
            tiny.model.generate(**second, max_new_tokens=3, do_sample=False)
        assert stats.calls == 3 and stats.visual_in == total_in + sum(visual_second)
        assert handle._call is None
        stats.reset()
        assert (stats.calls, stats.visual_in, stats.last) == (0, 0, [])


def test_no_growth_over_many_generate_calls():
    tiny = tiny_model("qwen2_vl", layers=4, hidden=32)
    batch = make_batches(tiny, ROWS[:2], "left").batch
    with pact.attached(tiny.model, "pact", overrides=["layer=2"]) as handle:
        hooks = all_hooks(tiny.model)
        installed = len(handle._hooks)
        first = None
        for call in range(100):
            with torch.no_grad():
                out = tiny.model.generate(**batch, max_new_tokens=2, do_sample=False)
            first = out if first is None else first
            assert torch.equal(out, first)
            assert handle._call is None
            if call % 25 == 0:
                gc.collect()
                assert len(handle._sessions) <= 1  # only a cache still referenced is tracked
        del out
        gc.collect()
        assert len(handle._sessions) == 0  # sessions die with their caches
        assert len(handle.stats.last) == 1 and handle.stats.calls == 100
        assert all_hooks(tiny.model) == hooks and len(handle._hooks) == installed


def test_failed_forward_is_not_counted():
    """A forward that raises after the stage ran records nothing and leaves no call state."""
    tiny = tiny_model("llava", "qwen2")
    batch = make_batches(tiny, ROWS[:1], "left").batch

    def fail(module, args, output):
        raise RuntimeError("boom")

    with pact.attached(tiny.model, "pact") as handle:
        broken = tiny.model.get_decoder().layers[-1].register_forward_hook(fail)
        with pytest.raises(RuntimeError, match="boom"):
            logits(tiny, batch)
        broken.remove()
        assert handle._call is None
        assert (handle.stats.calls, handle.stats.visual_in, handle.stats.last) == (0, 0, [])
        logits(tiny, batch)
        assert handle.stats.calls == 1
