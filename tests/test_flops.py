"""Analytic prefill FLOPs (pact.flops, handle.stats) against torch's FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
import transformers as hf
from helpers_hook import make_batches, tiny_model
from torch.utils.flop_counter import FlopCounterMode

import pact
from pact.flops import DecoderShape

pytestmark = pytest.mark.usefixtures("single_thread")


def decoder_layer_flops(counter: FlopCounterMode, prefix: str) -> int:
    """FLOPs counted inside the decoder layers (modules ``<prefix>.layers.<i>``)."""
    counts = counter.get_flop_counts()
    layers = [
        name
        for name in counts
        if name.startswith(f"{prefix}.layers.") and name.rsplit(".", 1)[-1].isdigit()
    ]
    assert layers
    return sum(sum(counts[name].values()) for name in layers)


@pytest.mark.parametrize("kind", ["qwen2", "llama", "mistral", "phi3"])
@pytest.mark.parametrize("tokens", [1, 7, 33])
def test_layer_flops_equal_the_counted_matrix_products(tiny_decoder_config, kind, tokens):
    config = tiny_decoder_config(kind, num_key_value_heads=2, intermediate_size=96)
    config._attn_implementation = "eager"
    model = hf.AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(3, 100, (1, tokens), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids)
    shape = DecoderShape.from_config(config)
    prefix = f"{type(model).__name__}.model"
    assert decoder_layer_flops(counter, prefix) == shape.layers * shape.layer_flops(tokens)


REDUCTIONS = {
    "one stage": {"stages": [{"layer": 2, "scorer": "norm", "keep_ratio": 0.5}]},
    "three stages": {
        "stages": [
            {"layer": 1, "scorer": "norm", "keep_ratio": 0.5},
            {"layer": 3, "scorer": "norm", "keep_tokens": 5},
            {"layer": 6, "scorer": "withdraw"},
        ]
    },
}


@pytest.mark.parametrize("reduction", list(REDUCTIONS))
@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl"])
def test_handle_stats_flops_equal_the_counted_reduced_decoder(family, reduction):
    tiny = tiny_model(family, attn="eager")
    batch = make_batches(tiny, [["text:3", "image", "text:4"]]).batch
    prefix = f"{type(tiny.model).__name__}.model.language_model"
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tiny.model(**batch)
    unreduced = decoder_layer_flops(counter, prefix)
    with pact.attached(tiny.model, REDUCTIONS[reduction]) as handle:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            tiny.model(**batch)
        flops = handle.stats.summary()["last_call"]
    assert flops["prefill_flops_unreduced"] == unreduced
    assert flops["prefill_flops"] == decoder_layer_flops(counter, prefix)
    assert flops["prefill_flops"] < unreduced
    assert handle.stats.prefill_flops == flops["prefill_flops"]  # running total of one call


def test_batch_flops_are_the_sum_of_the_rows_alone():
    tiny = tiny_model("llava")
    rows = [["text:3", "image", "text:4"], ["text:9", "image", "text:1"], ["text:6"]]
    batches = make_batches(tiny, rows, "left")
    with pact.attached(tiny.model, "fastv", overrides=["layer=2"]) as handle, torch.no_grad():
        tiny.model(**batches.batch)
        together = handle.stats.last_flops
        alone = []
        for row in batches.alone[:2]:  # the text-only row alone reduces nothing: no stats
            tiny.model(**row)
            alone.append(handle.stats.last_flops)
    text_only = DecoderShape.from_config(tiny.model.get_decoder().config).prefill_flops(6)
    assert together[0] == sum(r[0] for r in alone) + text_only
    assert together[1] == sum(r[1] for r in alone) + text_only


def test_prefill_flops_follow_the_stages():
    shape = DecoderShape(hidden=8, intermediate=16, heads=2, kv_heads=1, head_dim=4, layers=4)
    assert shape.layer_flops(3) == 2 * 3 * 8 * (2 * 8 + 2 * 4) + 4 * 9 * 8 + 6 * 3 * 8 * 16
    assert shape.prefill_flops(10) == 4 * shape.layer_flops(10)
    staged = shape.prefill_flops(10, [(1, 6), (3, 2)])
    assert staged == shape.layer_flops(10) + 2 * shape.layer_flops(6) + shape.layer_flops(2)
