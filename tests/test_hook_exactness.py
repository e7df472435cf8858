"""Attaching is free when it does nothing, detaching undoes everything, and proportional
attention is exact: m identical tokens merged into one of size m weigh as the m copies.
"""

from __future__ import annotations

import pytest
import torch
from helpers_hook import (
    FAMILY_TEXT,
    ROWS,
    all_hooks,
    greedy,
    layer_probe,
    logits,
    make_batches,
    tiny_model,
)

import pact
from pact.bench.gpu.flash_check import COPIES, VECTORS, copies_inputs
from pact.hooks.attention import KWARG

pytestmark = pytest.mark.usefixtures("single_thread")


def untouched(model) -> tuple[str, int, bool]:
    """What attaching changes on a model: attention name, hook count, handle attribute.

    Take it after a first forward: transformers installs output-capturing hooks lazily.
    """
    decoder = model.get_decoder()
    return decoder.config._attn_implementation, all_hooks(model), hasattr(model, "_pact_handle")


@pytest.mark.parametrize(("family", "text"), FAMILY_TEXT)
def test_none_preset_is_bit_identical(family, text):
    tiny = tiny_model(family, text)
    batch = make_batches(tiny, ROWS, "left").batch
    reference = logits(tiny, batch)
    before = untouched(tiny.model)
    with pact.attached(tiny.model, "none") as handle:
        assert untouched(tiny.model)[:2] == before[:2]  # no hook, same attention function
        out = logits(tiny, batch)
    assert torch.equal(out, reference)
    assert handle.stats.calls == 0
    assert untouched(tiny.model) == before


@pytest.mark.parametrize("preset", ["pact", "tome"])
@pytest.mark.parametrize(("family", "text"), FAMILY_TEXT)
def test_detach_is_bit_identical(family, text, preset):
    tiny = tiny_model(family, text)
    batch = make_batches(tiny, ROWS, "left").batch
    reference = logits(tiny, batch)
    before = untouched(tiny.model)
    handle = pact.attach(tiny.model, preset)
    assert untouched(tiny.model) != before
    reduced = logits(tiny, batch)
    handle.detach()
    assert untouched(tiny.model) == before
    assert not torch.equal(reduced, reference)  # it was attached
    assert torch.equal(logits(tiny, batch), reference)
    handle.detach()  # idempotent
    assert torch.equal(logits(tiny, batch), reference)


def test_detach_restores_generate():
    tiny = tiny_model("qwen2_vl")
    batch = make_batches(tiny, ROWS, "left").batch
    reference = greedy(tiny, batch)
    with pact.attached(tiny.model, "pact"):
        reduced = greedy(tiny, batch)
    after = greedy(tiny, batch)
    assert not all(torch.equal(a, b) for a, b in zip(reduced.logits, reference.logits, strict=True))
    assert torch.equal(after.sequences, reference.sequences)
    for ours, theirs in zip(after.logits, reference.logits, strict=True):
        assert torch.equal(ours, theirs)


class Boom(RuntimeError):
    pass


def raise_in_layer(model, index: int):
    """A pre-hook that fails inside decoder layer ``index`` (after pact's stage at 4)."""

    def hook(module, args, kwargs):
        raise Boom("failure inside the forward")

    return model.get_decoder().layers[index].register_forward_pre_hook(hook, with_kwargs=True)


def test_error_inside_forward_then_detach_restores():
    tiny = tiny_model("llava_onevision", "llama")
    batch = make_batches(tiny, ROWS, "left").batch
    reference = logits(tiny, batch)
    before = untouched(tiny.model)
    failing = raise_in_layer(tiny.model, 5)
    with pytest.raises(Boom), pact.attached(tiny.model, "pact") as handle:
        logits(tiny, batch)
    failing.remove()
    assert handle._call is None  # per-call state is cleared even when the forward fails
    assert untouched(tiny.model) == before  # the context manager detached on the error
    assert torch.equal(logits(tiny, batch), reference)


def test_error_inside_forward_leaves_the_handle_usable():
    """A failed forward leaves no half-reduced state behind for the next one."""
    tiny = tiny_model("llava", "qwen2")
    batch = make_batches(tiny, ROWS, "left").batch
    with pact.attached(tiny.model, "pact") as handle:
        clean = logits(tiny, batch)
        failing = raise_in_layer(tiny.model, 6)
        with pytest.raises(Boom):
            logits(tiny, batch)
        failing.remove()
        assert handle._call is None
        again = logits(tiny, batch)
    assert torch.equal(again, clean)


def test_attaching_twice_is_an_error():
    tiny = tiny_model("llava", "qwen2")
    batch = make_batches(tiny, ROWS, "left").batch
    handle = pact.attach(tiny.model, "pact")
    first = logits(tiny, batch)
    for config in ("pact", "none", "dbdpc"):
        with pytest.raises(ValueError, match="already attached"):
            pact.attach(tiny.model, config)
    assert torch.equal(logits(tiny, batch), first)  # the failed attaches changed nothing
    handle.detach()
    with pact.attached(tiny.model, "pact"):  # after detach, attaching works again
        assert torch.equal(logits(tiny, batch), first)


def test_two_hooked_models_stay_independent():
    """Two models share pact's registered attention functions, never their state."""
    one, two = tiny_model("llava", "qwen2"), tiny_model("qwen2_vl", seed=1)
    batch_one = make_batches(one, ROWS, "left").batch
    batch_two = make_batches(two, ROWS, "right").batch

    def run(tiny, batch):
        return logits(tiny, batch), greedy(tiny, make_batches(tiny, ROWS[:2], "left").batch)

    with pact.attached(one.model, "pact"):
        alone_one = run(one, batch_one)
    with pact.attached(two.model, "tome"):
        alone_two = run(two, batch_two)
    with pact.attached(one.model, "pact") as h1, pact.attached(two.model, "tome") as h2:
        first_one, first_two = run(one, batch_one), run(two, batch_two)
        second_one = run(one, batch_one)
        assert len(h1.stats.last) == 1 and len(h2.stats.last) == 8
    for alone, together in (
        (alone_one, first_one),
        (alone_two, first_two),
        (alone_one, second_one),
    ):
        assert torch.equal(alone[0], together[0])
        assert torch.equal(alone[1].sequences, together[1].sequences)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize(
    ("family", "text"), [("llava_onevision", "qwen2"), ("qwen2_5_vl", "qwen2")]
)
def test_removed_positions_repeat_the_last_surviving_output(family, text, padding_side):
    """The output has the input's length: every surviving position holds its own output,
    every removed one repeats the nearest surviving position before it."""
    tiny = tiny_model(family, text)
    batches = make_batches(tiny, ROWS, padding_side)
    visual = tiny.visual_mask(batches.batch)
    kept = []

    def record_slots(module, args):  # the last layer sees the final reduced sequence
        view = handle._call.view
        kept.extend([view.slots.clone(), view.slot_mask.clone()])

    last_layer = tiny.model.get_decoder().layers[-1]
    with pact.attached(tiny.model, "pact") as handle:
        probe = last_layer.register_forward_pre_hook(record_slots)
        out = logits(tiny, batches.batch)
        probe.remove()
        after_merge = handle.stats.last[-1].after_merge
    slots, slot_mask = kept
    assert out.shape[:2] == batches.batch["input_ids"].shape
    for row in range(len(ROWS)):
        survivors = torch.zeros(out.shape[1], dtype=torch.bool)
        survivors[slots[row][slot_mask[row]]] = True
        assert bool(survivors[~visual[row]].all())  # text and padding are never removed
        assert int((survivors & visual[row]).sum()) == after_merge[row]
        for position in range(out.shape[1]):
            source = max(p for p in range(position + 1) if survivors[p])
            assert torch.equal(out[row, position], out[row, source])
        if bool(visual[row].any()):
            assert not bool(survivors.all())


# ------------------------------------------------------------- proportional attention


def left_pad(embeds, positions, visual, width: int):
    """One row left-padded to ``width`` (zeros, masked); also returns its attention mask."""
    pad = width - embeds.shape[1]
    mask = torch.ones(1, width, dtype=torch.long, device=embeds.device)
    mask[:, :pad] = 0
    embeds = torch.cat([embeds.new_zeros(1, pad, embeds.shape[2]), embeds], dim=1)
    positions = torch.cat([positions.new_zeros(1, pad), positions], dim=1)
    visual = torch.cat([visual.new_zeros(1, pad), visual], dim=1)
    return embeds, positions, visual, mask


def stage_at_zero(proportional: bool) -> dict:
    """Merge only (near-)identical tokens, at the only layer."""
    return {
        "stages": [
            {
                "layer": 0,
                "clusterer": {"name": "dbdpc", "cutoff": 1e-4},
                "proportional_attention": proportional,
            }
        ]
    }


def merged_vs_copies(tiny, proportional: bool, padded: bool, reference_model=None):
    """Largest next-token logit difference, merged (hooked) vs the m copies (unhooked
    ``reference_model``, by default the same model), and what layer 0 was handed."""
    embeds, positions, visual = copies_inputs(tiny, COPIES)
    model = tiny.model
    with torch.no_grad():
        reference_model = reference_model or model
        reference = reference_model(inputs_embeds=embeds, position_ids=positions).logits[0, -1]
    kwargs = {"inputs_embeds": embeds, "position_ids": positions}
    if padded:  # a longer second row pads this one: the masked attention path
        width = embeds.shape[1] + 5
        other, other_positions, other_visual = copies_inputs(tiny, COPIES + 5, seed=1)
        other_visual[:] = False
        embeds, positions, visual, mask = left_pad(embeds, positions, visual, width)
        kwargs = {
            "inputs_embeds": torch.cat([embeds, other]),
            "position_ids": torch.cat([positions, other_positions]),
            "attention_mask": torch.cat([mask, torch.ones_like(mask)]),
        }
        visual = torch.cat([visual, other_visual])
    with pact.attached(model, stage_at_zero(proportional)) as handle, layer_probe(model, 0) as seen:
        handle.set_visual_mask(visual)
        with torch.no_grad():
            out = model(**kwargs).logits[0, -1]
    stats = handle.stats.last[0]
    assert stats.visual_in[0] == VECTORS + COPIES
    assert stats.after_merge[0] == VECTORS + 1  # exactly the copies were merged
    return (out.float() - reference.float()).abs().max().item(), seen


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("text", ["llama", "qwen2", "gemma", "mistral"])
def test_proportional_attention_equals_the_copies(text, attn, padded):
    tiny = tiny_model("llava", text, layers=1, attn=attn)
    difference, seen = merged_vs_copies(tiny, proportional=True, padded=padded)
    assert difference <= 1e-4
    reduced = seen[0][KWARG]
    assert reduced.any_padding == padded  # padded: the additive-mask path ran, not the fast one
    without, _ = merged_vs_copies(tiny, proportional=False, padded=padded)
    assert without > 1e-3  # without the log(size) bias the merged token weighs as one copy


BF16_TOLERANCE = 1e-2
"""bf16 keeps 8 significant bits: the bias ``log(m) / scale`` (4.4 for m = 3, head_dim 16)
rides in the keys within ~0.02, and the merged and unmerged runs round q.k and the softmax
sums differently. On these logits (effect of dropping the bias ~0.05-0.1) the observed
error is ~2e-3; 1e-2 leaves room for other kernels' rounding, and the test also requires
the bias's own effect to be several times larger than the error."""


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_proportional_attention_in_bfloat16(padded):
    """Unpadded sdpa takes the extra-head-dimension route that flash kernels use."""
    tiny = tiny_model("llava", "qwen2", layers=1, attn="sdpa", dtype=torch.bfloat16)
    difference, _ = merged_vs_copies(tiny, proportional=True, padded=padded)
    without, _ = merged_vs_copies(tiny, proportional=False, padded=padded)
    assert difference <= BF16_TOLERANCE
    assert without > 4 * difference


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash_attention_2 needs CUDA")
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_proportional_attention_under_flash_attention(padded):
    """The log(size) bias rides in an extra head dimension under flash attention (bf16).

    The copies run through an sdpa twin (same seed, same weights): under flash,
    transformers reads non-increasing position ids of a single row as packed sequences.
    """
    pytest.importorskip("flash_attn")
    options = dict(layers=1, dtype=torch.bfloat16, device="cuda")
    tiny = tiny_model("llava", "qwen2", attn="flash_attention_2", **options)
    twin = tiny_model("llava", "qwen2", attn="sdpa", **options).model
    for ours, theirs in zip(tiny.model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(ours, theirs)
    difference, seen = merged_vs_copies(tiny, True, padded, reference_model=twin)
    without, _ = merged_vs_copies(tiny, False, padded, reference_model=twin)
    assert seen[0][KWARG].any_padding == padded
    assert difference <= BF16_TOLERANCE
    assert without > 4 * difference
