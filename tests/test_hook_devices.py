"""Models dispatched with accelerate: its hooks on every decoder layer and pact's coexist.

The device map names every top-level block and each decoder layer as its own entry (all on
"cpu", the only device here) and ``force_hooks`` makes accelerate install its
device-alignment hooks as it does for a real multi-device split. The reduced model must
compute exactly what the same model, not dispatched, computes.
"""

from __future__ import annotations

import pytest
import torch
from helpers_hook import ROWS, cache_lengths, cache_of, greedy, logits, make_batches, tiny_model

import pact

accelerate = pytest.importorskip("accelerate")
pytestmark = pytest.mark.usefixtures("single_thread")


def layer_by_layer_map(model) -> dict[str, str]:
    """A device map with one entry per decoder layer and per block beside the decoder."""
    decoder = model.get_decoder()
    device_map: dict[str, str] = {}

    def split(module, name: str) -> None:
        if module is decoder:
            for child_name, child in module.named_children():
                if child_name == "layers":
                    for index in range(len(child)):
                        device_map[f"{name}.layers.{index}"] = "cpu"
                else:
                    device_map[f"{name}.{child_name}"] = "cpu"
        elif any(inner is decoder for inner in module.modules()):
            for child_name, child in module.named_children():
                split(child, f"{name}.{child_name}".lstrip("."))
        else:
            device_map[name] = "cpu"

    split(model, "")
    return device_map


@pytest.mark.parametrize(("family", "text"), [("llava", "mistral"), ("qwen2_vl", "qwen2")])
def test_dispatched_model_reduces_like_the_plain_one(family, text):
    plain, dispatched = tiny_model(family, text), tiny_model(family, text)
    device_map = layer_by_layer_map(dispatched.model)
    layers = dispatched.model.get_decoder().layers
    assert sum(".layers." in name for name in device_map) == len(layers) > 1
    accelerate.dispatch_model(dispatched.model, device_map, force_hooks=True)
    assert all(hasattr(layer, "_hf_hook") for layer in layers)
    batch = make_batches(plain, ROWS, "left").batch
    unreduced = logits(dispatched, batch)
    with pact.attached(plain.model, "pact"):
        expected = logits(plain, batch)
        expected_generated = greedy(plain, batch)
    with pact.attached(dispatched.model, "pact") as handle:
        reduced = logits(dispatched, batch)
        generated = greedy(dispatched, batch)
    assert handle.stats.calls == 2
    assert torch.equal(reduced, expected)
    assert torch.equal(generated.sequences, expected_generated.sequences)
    assert cache_lengths(cache_of(generated)) == cache_lengths(cache_of(expected_generated))
    assert torch.equal(logits(dispatched, batch), unreduced)  # detached
