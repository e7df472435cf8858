"""Sliding-window decoders: a reduced layer's window covers the same original positions as
in the unreduced model (kept slots carry their original positions), in prefill, decoding
and padded batches. Every prompt here is longer than the window, so the window matters."""

from __future__ import annotations

import pytest
import torch
import transformers as hf
from conftest import TINY_DECODER
from helpers_hook import TOL, cache_of, tiny_model

import pact
from pact.bench.gpu.flash_check import COPIES, VECTORS, copies_inputs

pytestmark = pytest.mark.usefixtures("single_thread")

WINDOW = 8
VISUAL_IDS = list(range(100, 128))
"""Visual token ids: the top of the vocabulary, which generation is told never to emit."""
KINDS = ["mistral", "qwen2", "gemma3"]
"""Mistral: one window on every layer (its config's); Qwen2: windowed and full layers
alternate; Gemma-3: five local layers to one global, each type with its own rotary base."""


def windowed_decoder(kind: str, window: int = WINDOW) -> hf.PreTrainedModel:
    torch.manual_seed(0)
    if kind == "mistral":
        config = hf.MistralConfig(**TINY_DECODER, sliding_window=window)
        return hf.MistralForCausalLM(config).eval()
    if kind == "qwen2":
        types = ["sliding_attention", "full_attention"] * 3
        config = hf.Qwen2Config(
            **TINY_DECODER, use_sliding_window=True, sliding_window=window, layer_types=types
        )
        return hf.Qwen2ForCausalLM(config).eval()
    types = ["sliding_attention"] * 5 + ["full_attention"]
    config = hf.Gemma3TextConfig(
        **TINY_DECODER, sliding_window=window, layer_types=types, head_dim=16,
        query_pre_attn_scalar=16,
    )  # fmt: skip
    return hf.Gemma3ForCausalLM(config).eval()


def prompts(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    """One row per length: text, then 16 visual ids, then text (all longer than WINDOW)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        row = torch.randint(3, 100, (length,), generator=generator)
        row[6:22] = torch.randint(100, 128, (16,), generator=generator)
        rows.append(row)
    return rows


def left_padded(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :], mask[index, width - len(row) :] = row, 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


def run(model, batch, new_tokens: int = 5):
    """Prefill logits and a greedy continuation (sequences, per-step logits)."""
    with torch.no_grad():
        prefill = model(**batch).logits
        generate_inputs = {k: v for k, v in batch.items() if k != "position_ids"}
        out = model.generate(
            **generate_inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, return_dict_in_generate=True, output_logits=True, pad_token_id=0,
            suppress_tokens=VISUAL_IDS,
        )  # fmt: skip
    return prefill, out


@pytest.mark.parametrize("kind", KINDS)
def test_unreducing_stage_equals_the_stock_windowed_model(kind):
    """A stage that removes nothing runs every later layer through pact's mask: prefill
    and decoding must match the stock model, whose windows hide most of each prompt."""
    model = windowed_decoder(kind)
    batch = left_padded(prompts([40, 33]))
    real = batch["attention_mask"].bool()
    stock_prefill, stock = run(model, batch)
    with pact.attached(model, "none"):
        assert torch.equal(run(model, batch)[0], stock_prefill)  # preset none: bit-identical
    config = {"stages": [{"layer": 2}]}
    with pact.attached(model, config, visual_token_ids=VISUAL_IDS) as handle:
        prefill, out = run(model, batch)
        assert handle.stats.last[0].visual_in == [16, 16]
    assert (prefill - stock_prefill)[real].abs().max() <= 1e-5
    assert torch.equal(out.sequences, stock.sequences)
    for ours, theirs in zip(out.logits, stock.logits, strict=True):
        assert (ours - theirs).abs().max() <= 1e-5
    unwindowed = windowed_decoder(kind, window=4096)
    with torch.no_grad():
        wide = unwindowed(**batch).logits
    assert (wide - stock_prefill)[real].abs().max() > 1e-3  # the window does matter here


@pytest.mark.parametrize("kind", KINDS)
def test_reduced_batch_rows_equal_rows_alone_under_windows(kind):
    model = windowed_decoder(kind)
    rows = prompts([40, 29])
    batch = left_padded(rows)
    with pact.attached(model, "pact", overrides=["layer=2"], visual_token_ids=VISUAL_IDS) as h:
        prefill, out = run(model, batch)
        assert all(after < 16 for after in h.stats.last[0].after_merge)
        alone = [run(model, left_padded([row])) for row in rows]
    for index, (single_prefill, single) in enumerate(alone):
        real = batch["attention_mask"][index].bool()
        assert (prefill[index][real] - single_prefill[0]).abs().max() <= TOL
        width = len(rows[index])
        new = out.sequences[index, batch["input_ids"].shape[1] :]
        assert torch.equal(new, single.sequences[0, width:])


def test_merged_copies_equal_the_copies_within_a_window():
    """m identical tokens merged into one of size m, on a one-layer decoder whose window
    (8) is shorter than the prompt (13): the last token sees the copies and not the start,
    in the merged run as in the unmerged one."""
    tiny = tiny_model("llava", "mistral", layers=1, attn="eager")
    text_config = tiny.model.config.text_config
    embeds, positions, visual = copies_inputs(tiny, COPIES)
    assert embeds.shape[1] > WINDOW
    with torch.no_grad():
        wide = tiny.model(inputs_embeds=embeds, position_ids=positions).logits[0, -1]
        text_config.sliding_window = WINDOW
        reference = tiny.model(inputs_embeds=embeds, position_ids=positions).logits[0, -1]
    assert (wide - reference).abs().max() > 1e-3
    stage = {"layer": 0, "clusterer": {"name": "dbdpc", "cutoff": 1e-4}}
    with pact.attached(tiny.model, {"stages": [stage]}) as handle, torch.no_grad():
        handle.set_visual_mask(visual)
        merged = tiny.model(inputs_embeds=embeds, position_ids=positions).logits[0, -1]
    assert handle.stats.last[0].after_merge[0] == VECTORS + 1  # exactly the copies merged
    assert (merged - reference).abs().max() <= 1e-4


def test_windowed_layers_keep_their_whole_reduced_cache():
    """From the first stage on, a sliding layer's cache keeps every reduced key (the mask
    applies the window): its length is the reduced sequence, not window - 1."""
    model = windowed_decoder("mistral")
    batch = left_padded(prompts([40]))
    with pact.attached(model, "pact", overrides=["layer=2"], visual_token_ids=VISUAL_IDS) as h:
        _, out = run(model, batch, new_tokens=3)
        kept = h.stats.last[0].after_merge[0]
    lengths = [layer.get_seq_length() for layer in cache_of(out).layers]
    assert lengths[2:] == [40 - 16 + kept + 2] * 4
    assert all(len(layer.keys[0, 0]) == lengths[2] for layer in cache_of(out).layers[2:])


def test_flash_attention_refused_with_windowed_layers():
    model = windowed_decoder("mistral")
    model.model.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="applies sliding windows in cache slots"):
            pact.attach(model, "euti", overrides=["layer=2"], visual_token_ids=VISUAL_IDS)
    finally:
        model.model.config._attn_implementation = "sdpa"


def test_recomputed_positions_refused_with_per_layer_rotary():
    model = windowed_decoder("gemma3")
    with pytest.raises(ValueError, match="one per layer type"):
        pact.attach(model, "pact", overrides=["layer=2", "position_mode=mean"])
