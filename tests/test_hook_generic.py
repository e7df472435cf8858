"""The generic path: a plain text decoder (no image/video token ids) reduces the tokens an
explicit mask marks, from ``inputs_embeds`` or ``input_ids``."""

from __future__ import annotations

import pytest
import torch
import transformers as hf
from helpers_hook import (
    CACHE,
    ROWS,
    TOL,
    cache_lengths,
    cache_of,
    make_batches,
    rope_probe,
    tiny_model,
)

import pact

pytestmark = pytest.mark.usefixtures("single_thread")

CAUSAL_LM = {"qwen2": hf.Qwen2ForCausalLM, "llama": hf.LlamaForCausalLM}


def text_model_of(tiny) -> hf.PreTrainedModel:
    """A stand-alone CausalLM with the weights of ``tiny``'s language model and head."""
    config = tiny.model.config.text_config
    model = CAUSAL_LM[config.model_type](config).eval()
    model.model.load_state_dict(tiny.model.get_decoder().state_dict())
    model.lm_head.load_state_dict(tiny.model.lm_head.state_dict())
    model.config._attn_implementation = tiny.model.get_decoder().config._attn_implementation
    return model


def decoder_inputs(tiny, batch) -> dict:
    """What the VLM hands its language model: merged embeddings and positions."""
    seen = {}

    def hook(module, args, kwargs):
        seen.update(inputs_embeds=kwargs["inputs_embeds"], position_ids=kwargs["position_ids"])

    handle = tiny.model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    try:
        with torch.no_grad():
            tiny.model(**batch, position_ids=positions)
    finally:
        handle.remove()
    return seen | {"attention_mask": batch["attention_mask"]}


@pytest.mark.parametrize("text", ["qwen2", "llama"])
def test_generic_decoder_with_embeds_equals_the_vlm(text):
    """The same decoder, fed the same embeddings and told which are visual, reduces
    exactly as the VLM does from its image token ids."""
    tiny = tiny_model("llava", text)
    batch = make_batches(tiny, ROWS, "left").batch
    inputs = decoder_inputs(tiny, batch)
    mask = tiny.visual_mask(batch)
    text_model = text_model_of(tiny)
    with torch.no_grad():
        unreduced = text_model(**inputs).logits
    with pact.attached(tiny.model, "pact") as vlm_handle, torch.no_grad():
        vlm = tiny.model(**batch, position_ids=inputs["position_ids"]).logits
    with pact.attached(text_model, "pact") as handle, torch.no_grad():
        handle.set_visual_mask(mask)
        generic = text_model(**inputs).logits
    assert (generic - vlm).abs().max() <= TOL
    assert handle.stats.last[0].visual_in == mask.sum(1).tolist()
    assert handle.stats.last[0].after_merge == vlm_handle.stats.last[0].after_merge
    assert (generic - unreduced).abs().max() > 1e-3


def ids_with_visual_span(vocab: int, seed: int = 0):
    """Two rows of text ids around a span of 'visual' ids drawn from a reserved range."""
    generator = torch.Generator().manual_seed(seed)
    visual_ids = list(range(vocab - 40, vocab))
    rows = []
    for before, span, after in ((3, 24, 4), (2, 30, 5)):
        text = lambda n: torch.randint(3, vocab - 40, (n,), generator=generator)  # noqa: E731
        span_ids = torch.randint(vocab - 40, vocab, (span,), generator=generator)
        rows.append(torch.cat([text(before), span_ids, text(after)]))
    width = max(len(row) for row in rows)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :] = row
        mask[index, width - len(row) :] = 1
    return ids, mask, visual_ids


@pytest.fixture
def small_decoder(tiny_decoder_config):
    def make(kind: str) -> hf.PreTrainedModel:
        torch.manual_seed(0)
        return CAUSAL_LM[kind](tiny_decoder_config(kind)).eval()

    return make


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_generic_decoder_with_input_ids(kind, small_decoder):
    """An explicit mask and ``visual_token_ids`` mark the same tokens: same result; and
    generate reduces the prefill only, with positions as the unreduced model's."""
    model = small_decoder(kind)
    ids, attention, visual_ids = ids_with_visual_span(128)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    mask = torch.isin(ids, torch.tensor(visual_ids)) & attention.bool()
    config = ["layer=2", "clusterer.cutoff=0.5"]
    with torch.no_grad():
        unreduced = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
        with pact.attached(model, "pact", overrides=config) as handle:
            handle.set_visual_mask(mask)
            explicit = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
            stats = handle.stats.last[0]
        with pact.attached(model, "pact", overrides=config, visual_token_ids=visual_ids):
            by_ids = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    assert torch.equal(explicit, by_ids)
    assert stats.visual_in == [24, 30] and sum(stats.after_merge) < 54
    assert (explicit - unreduced).abs().max() > 1e-3

    generate = dict(input_ids=ids, attention_mask=attention, max_new_tokens=3, do_sample=False)
    with torch.no_grad(), rope_probe(model) as reference_positions:
        model.generate(**generate)
    with pact.attached(model, "pact", overrides=config) as handle, rope_probe(model) as seen:
        handle.set_visual_mask(mask)
        with torch.no_grad():
            out = model.generate(**generate, return_dict_in_generate=True)
    removed = min(n - k for n, k in zip(stats.visual_in, stats.after_merge, strict=True))
    width = ids.shape[1]
    assert cache_lengths(cache_of(out)) == [width + 2] * 2 + [width - removed + 2] * 4
    for step in range(1, 3):
        assert torch.equal(seen[step], reference_positions[step])


def test_generic_decoder_without_a_mask_fails_at_each_prefill(small_decoder):
    model = small_decoder("llama")
    ids, attention, visual_ids = ids_with_visual_span(128)
    mask = torch.isin(ids, torch.tensor(visual_ids)) & attention.bool()
    with pact.attached(model, "pact", overrides=["layer=2"]) as handle, torch.no_grad():
        with pytest.raises(ValueError, match=r"no image/video token ids.*set_visual_mask\(mask\)"):
            model(input_ids=ids, attention_mask=attention)
        handle.set_visual_mask(mask)
        out = model(input_ids=ids, attention_mask=attention, use_cache=True)
        # A decoding step on that cache needs no mask (its one token is text)...
        longer = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        step = model(input_ids=ids[:, -1:], attention_mask=longer, **{CACHE: cache_of(out)})
        assert step.logits.shape == (2, 1, 128)
        # ...but the mask is used once: the next prefill needs its own.
        with pytest.raises(ValueError, match="set_visual_mask"):
            model(input_ids=ids, attention_mask=attention)
