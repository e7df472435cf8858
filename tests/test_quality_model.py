"""Regression tests on the shipped benchmark model (CPU, the card's fixed test subset)."""

from __future__ import annotations

import json

import pytest
import torch

from pact.bench.quality import methods as bench
from pact.hooks import attached
from pact.models.shapes import model as quality_model
from pact.models.shapes.model import batch, card_figures, load
from pact.models.shapes.questions import KINDS
from pact.models.shapes.score import (
    SUBSET,
    answer_ids,
    blind_accuracy,
    examples,
    predictions,
)
from pact.models.shapes.spec import REDUCTION_LAYER

LAYER = REDUCTION_LAYER  # `pact bench quality`'s


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load()


@pytest.fixture(scope="module")
def subset():
    return examples("test", SUBSET)


@pytest.fixture(scope="module")
def unreduced_right(model, subset):
    return predictions(model, subset)


@pytest.fixture(scope="module")
def calibration():
    return batch(list(examples("val", 32)))


def accuracy_with(model, subset, calibration, name: str, target: float) -> tuple[float, float]:
    setting = bench.choose(model, calibration, name, target, LAYER, steps=7)
    result = bench.evaluate(model, subset, setting.config(), batch_size=64)
    return result["accuracy"], result["reduction_ratio"]


def test_the_shipped_model_looks_at_its_image_and_reaches_its_targets():
    figures = card_figures()
    test = figures["test"]
    assert test["examples"] == 1000
    assert test["accuracy"] >= 0.85
    assert all(test["by_kind"][kind] >= 0.70 for kind in KINDS)
    assert test["accuracy"] > blind_accuracy(examples("test", 1000)) + 0.3
    assert figures["vision"]["test_probe"]["shape"] >= 0.95
    config = json.loads((quality_model.assets_dir() / "config.json").read_text(encoding="utf-8"))
    assert config["text_config"]["num_hidden_layers"] >= 6
    assert config["image_seq_length"] >= 100


def test_the_card_is_the_one_its_record_renders():
    from pact.models.shapes.card import render

    card = (quality_model.assets_dir() / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card == render(card_figures())


def test_unreduced_accuracy_on_the_subset_equals_the_card(unreduced_right):
    assert sum(unreduced_right) == card_figures()["test"][f"first_{SUBSET}_correct"]


def test_the_cards_test_figures_are_what_the_shipped_weights_score(model):
    """Every test figure of the card, recomputed from the weights (1000 questions)."""
    from pact.models.shapes.score import accuracy_by_kind

    card = card_figures()["test"]
    scored = accuracy_by_kind(model, "test", card["examples"])
    assert scored["accuracy"] == card["accuracy"]
    assert scored["by_kind"] == card["by_kind"]
    assert scored["by_kind_interval"] == card["by_kind_interval"]


def test_answers_equal_greedy_generation(model, subset):
    """What the benchmark scores is what ``generate`` answers."""
    items = list(subset[:8])
    inputs = batch(items)
    generated = model.generate(**inputs, max_new_tokens=1)[:, -1]
    assert generated.tolist() == answer_ids(model, tuple(items))


def test_pact_keeps_95_percent_of_the_accuracy_at_half_the_tokens(
    model, subset, calibration, unreduced_right
):
    accuracy, ratio = accuracy_with(model, subset, calibration, "pact", 0.5)
    assert abs(ratio - 0.5) < 0.08
    assert accuracy >= 0.95 * sum(unreduced_right) / len(unreduced_right)


@pytest.mark.parametrize("target", [0.7, 0.9])
def test_pact_is_at_least_as_accurate_as_random_pruning(model, subset, calibration, target):
    pact_accuracy, pact_ratio = accuracy_with(model, subset, calibration, "pact", target)
    random_accuracy, random_ratio = accuracy_with(model, subset, calibration, "random", target)
    assert pact_ratio >= random_ratio - 0.05  # compared at (about) the same reduction
    assert pact_accuracy >= random_accuracy


def test_the_model_is_untouched_after_the_benchmark_detaches(model, subset):
    inputs = batch(list(subset[:4]))
    before = quality_model.answer_logits(model, inputs)
    with attached(model, "pact"):
        quality_model.answer_logits(model, inputs)
    assert torch.equal(quality_model.answer_logits(model, inputs), before)


def test_euti_norm_diagnostic_matches_the_layers_own_hidden_states(model):
    """benchmarks/shapes_euti_norms.py (docs/benchmarks.md's layer-2 explanation) reads the
    norms the model's own hidden states give, and its kept fraction is EUTI's top half."""
    import importlib.util
    from pathlib import Path

    from pact.models.shapes.vision import token_targets

    path = Path(__file__).parents[1] / "benchmarks" / "shapes_euti_norms.py"
    spec = importlib.util.spec_from_file_location("shapes_euti_norms", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    items = list(examples("test", 8))
    inputs = batch(items)
    objects = torch.stack([torch.from_numpy(token_targets(i.scene)["shape"] > 0) for i in items])
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[2]  # layer 2's input
    visual = inputs["input_ids"] == model.config.image_token_id
    norms = hidden[visual].norm(dim=-1).view(len(items), -1)
    expected = norms[objects].mean() / norms[~objects].mean()
    figures = script.layer_figures(model, inputs, objects, layer=2)
    assert figures["norm_ratio"] == pytest.approx(float(expected), abs=1e-3)
    scores, _ = script.RECORDED[0]
    assert 0 < figures["object_tokens_kept_at_half"] <= 1
    top = scores.argsort(dim=1, descending=True)[:, : scores.shape[1] // 2]
    kept = torch.zeros_like(objects).scatter_(1, top, True)
    assert figures["object_tokens_kept_at_half"] == pytest.approx(
        float(kept[objects].float().mean()), abs=1e-3
    )


def test_tower_attention_diagnostic_is_the_towers_own_attention(model):
    """benchmarks/shapes_tower_attention.py (docs/benchmarks.md's VisionZip explanation): its
    [CLS] row equals the stock tower's eager attention map, and the kept fraction counts."""
    import importlib.util
    from pathlib import Path

    from pact.models.shapes.model import pixel_values

    path = Path(__file__).parents[1] / "benchmarks" / "shapes_tower_attention.py"
    spec = importlib.util.spec_from_file_location("shapes_tower_attention", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    items = list(examples("test", 4))
    pixels = pixel_values([item.scene.image for item in items])
    scores = script.tower_scores(model, pixels)
    tower = model.model.vision_tower
    layers = tower.encoder.layers
    attention = layers[-1].self_attn
    original = attention.config._attn_implementation
    attention.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            maps = tower(pixels, output_attentions=True).attentions[-1]  # [B, H, T, T]
    finally:
        attention.config._attn_implementation = original
    torch.testing.assert_close(scores["cls"], maps[:, :, 0, 1:].sum(dim=1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores["mean"], maps.mean(dim=(1, 2))[:, 1:], atol=1e-6, rtol=1e-4)
    objects = torch.zeros_like(scores["cls"], dtype=torch.bool)
    objects[:, :3] = True
    assert script.figures(scores["cls"], objects, keep=scores["cls"].shape[1])[
        "object_tokens_kept"
    ] == pytest.approx(1.0)
