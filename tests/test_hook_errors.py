"""Bad configurations and unsupported models fail at attach, before any forward, with a
message that says why; a failed attach leaves the model exactly as it was."""

from __future__ import annotations

import pytest
import torch
import transformers as hf
from helpers_hook import (
    CACHE,
    ROWS,
    all_hooks,
    cache_lengths,
    cache_of,
    logits,
    make_batches,
    tiny_model,
)
from torch import nn

import pact
from pact.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")


def assert_unchanged(tiny, batch, reference) -> None:
    """No trace of a failed attach: same attention, no handle, same logits, attachable."""
    assert tiny.model.get_decoder().config._attn_implementation == "sdpa"
    assert not hasattr(tiny.model, "_pact_handle")
    assert torch.equal(logits(tiny, batch), reference)
    pact.attach(tiny.model, "pact").detach()


@pytest.fixture
def llava():
    tiny = tiny_model("llava", "llama")
    batch = make_batches(tiny, ROWS[:2], "left").batch
    return tiny, batch, logits(tiny, batch)


@pytest.mark.parametrize(
    ("config", "overrides", "bad_layer"),
    [("pact", ["layer=8"], 8), ("dbdpc", ["layer=100"], 100), ("tome", [], 6)],
)
def test_layer_out_of_range(config, overrides, bad_layer):
    tiny = tiny_model("qwen2_vl", layers=6 if config == "tome" else 8)
    batch = make_batches(tiny, ROWS[:2], "left").batch
    reference = logits(tiny, batch)
    hooks = all_hooks(tiny.model)
    layers = len(tiny.model.get_decoder().layers)
    with pytest.raises(ValueError, match=rf"layer {bad_layer} is out of range.*{layers} layers"):
        pact.attach(tiny.model, config, overrides=overrides)
    assert all_hooks(tiny.model) == hooks
    assert_unchanged(tiny, batch, reference)


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        ("no-such-preset", [], "neither a config file nor a preset; presets: .*pact"),
        ("pact", ["keep_ratio=2"], "stages.0.keep_ratio: Input should be less than or equal"),
        ("pact", ["cutof=0.3"], "cutof: Extra inputs are not permitted"),
        ("pact", ["clusterer.name=nope"], "unknown clusterer 'nope'; known clusterers: .*dbdpc"),
        ("pact", ["stages.3.layer=5"], "not an index"),
        ("dbdpc", ["alpha=2"], "alpha has an effect only with retrieval"),
        ({"stages": [{"layer": 5}, {"layer": 2}]}, [], "strictly increasing"),
    ],
)
def test_invalid_config_fails_at_attach(llava, config, overrides, message):
    tiny, batch, reference = llava
    with pytest.raises(ConfigError, match=message):
        pact.attach(tiny.model, config, overrides=overrides)
    assert_unchanged(tiny, batch, reference)


def test_attention_scorer_refused_under_flash_attention(llava):
    """FastV needs attention scores; flash never forms them. Checked before any forward,
    so the config name can stand in for a flash model on this CPU-only machine."""
    tiny, batch, reference = llava
    decoder = tiny.model.get_decoder()
    decoder.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match=r"needs attention scores.*flash_attention_2"):
            pact.attach(tiny.model, "fastv")
        assert decoder.config._attn_implementation == "flash_attention_2"
        # The attention-free PACT scorer is fine there, and detach restores the name.
        handle = pact.attach(tiny.model, "pact")
        assert decoder.config._attn_implementation == "pact_flash_attention_2"
        handle.detach()
        assert decoder.config._attn_implementation == "flash_attention_2"
    finally:
        decoder.config._attn_implementation = "sdpa"
    assert_unchanged(tiny, batch, reference)


def test_module_without_decoder_layers():
    for model in (
        nn.Linear(4, 4),
        hf.GPT2LMHeadModel(hf.GPT2Config(n_layer=1, n_embd=16, n_head=2)),
    ):
        with pytest.raises(
            TypeError, match=r"cannot find the decoder layers.*supported VLMs: LLaVA"
        ):
            pact.attach(model, "pact")
        assert not hasattr(model, "_pact_handle")


def test_layer_without_q_proj(tiny_decoder_config):
    """Phi-3 fuses q, k and v into one qkv_proj: pact cannot read the layer's keys."""
    model = hf.Phi3ForCausalLM(tiny_decoder_config("phi3"))
    with pytest.raises(TypeError, match=r"layer 1 \(Phi3DecoderLayer\) lacks q_proj, k_proj.*"):
        pact.attach(model, "pact", overrides=["layer=1"])
    assert not hasattr(model, "_pact_handle")
    assert model.get_decoder().config._attn_implementation != "pact_sdpa"


def test_no_visual_token_ids_and_no_mask(llava):
    """A model with no image/video ids (here: ids overridden to none) needs an explicit
    mask at every prefill; the message says so, and the handle stays usable."""
    tiny, batch, _ = llava
    mask = tiny.visual_mask(batch)
    with pact.attached(tiny.model, "pact", visual_token_ids=[]) as handle:
        with pytest.raises(ValueError, match=r"no image/video token ids.*set_visual_mask"):
            logits(tiny, batch)
        assert handle._call is None
        handle.set_visual_mask(mask)
        explicit = logits(tiny, batch)
    with pact.attached(tiny.model, "pact"):
        from_ids = logits(tiny, batch)
    assert torch.equal(explicit, from_ids)


def test_inputs_embeds_need_a_mask(llava):
    tiny, batch, _ = llava
    with torch.no_grad():
        embeds = tiny.model.get_input_embeddings()(batch["input_ids"])
    with pact.attached(tiny.model, "pact"), pytest.raises(ValueError, match="set_visual_mask"):
        tiny.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"])


def test_bad_visual_masks(llava):
    tiny, batch, _ = llava
    mask = tiny.visual_mask(batch)
    with pact.attached(tiny.model, "pact") as handle:
        for bad in (mask.long(), mask[0], "mask"):
            with pytest.raises(ValueError, match=r"\[batch, tokens\] bool tensor"):
                handle.set_visual_mask(bad)
        handle.set_visual_mask(mask[:, 1:])
        with pytest.raises(ValueError, match="does not match the sequence"):
            logits(tiny, batch)
        assert handle._call is None and handle._pending_mask is None


@pytest.mark.parametrize("tokens", [1, 3])
def test_cache_changed_outside_pact(llava, tokens):
    """Cropping a reduced cache is refused at the next forward, not silently misused."""
    tiny = llava[0]
    row = make_batches(tiny, ROWS[:1], "left").batch
    with pact.attached(tiny.model, "pact"), torch.no_grad():
        out = tiny.model(**row, use_cache=True)
        before = cache_lengths(cache_of(out))
        cache_of(out).crop(-tokens)
        assert cache_lengths(cache_of(out)) == [length - tokens for length in before]
        follow = row["input_ids"][:, -tokens:]
        with pytest.raises(RuntimeError, match=r"changed outside pact.*start a new cache"):
            tiny.model(input_ids=follow, **{CACHE: cache_of(out)}, use_cache=True)


def test_decoder_called_directly_is_an_error(llava):
    """The hooks live on the top model's forward; calling its decoder alone is refused."""
    tiny, batch, _ = llava
    with torch.no_grad():
        embeds = tiny.model.get_input_embeddings()(batch["input_ids"])
    with pact.attached(tiny.model, "pact"), pytest.raises(RuntimeError, match="outside a forward"):
        tiny.model.get_decoder()(inputs_embeds=embeds)


def test_offloaded_layer_refused(tiny_decoder_config):
    """Weights on the meta device (accelerate offload) cannot be read before the forward."""
    model = hf.LlamaForCausalLM(tiny_decoder_config("llama")).eval()
    model.model.layers[3].to("meta")
    with pytest.raises(TypeError, match="layer 3 has weights on the meta device"):
        pact.attach(model, "pact", overrides=["layer=1"], visual_token_ids=[5])
    assert not hasattr(model, "_pact_handle")
    model.model.layers[3].to_empty(device="cpu")
    model.model.layers[0].to("meta")  # before the stage: pact never reads it
    pact.attach(model, "pact", overrides=["layer=1"], visual_token_ids=[5]).detach()


def test_unwrappable_attention_refused(llava):
    """flex attention takes a block mask pact does not build: refused before any change."""
    tiny, _batch, _reference = llava
    decoder_config = tiny.model.get_decoder().config
    decoder_config._attn_implementation = "flex_attention"
    try:
        with pytest.raises(
            ValueError, match="cannot wrap attention implementation 'flex_attention'"
        ):
            pact.attach(tiny.model, "pact")
        assert decoder_config._attn_implementation == "flex_attention"
        assert not hasattr(tiny.model, "_pact_handle")
    finally:
        decoder_config._attn_implementation = "sdpa"


def test_stale_handle_never_undoes_a_newer_one(llava):
    tiny, batch, reference = llava
    first = pact.attach(tiny.model, "pact")
    first.detach()
    second = pact.attach(tiny.model, "euti")
    reduced = logits(tiny, batch)
    first.detach()  # stale: must not touch the model
    assert second.attached and not first.attached
    assert tiny.model.get_decoder().config._attn_implementation == "pact_sdpa"
    assert torch.equal(logits(tiny, batch), reduced)
    second.detach()
    assert torch.equal(logits(tiny, batch), reference)
