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
from pact.models.shapes.score import SUBSET, blind_accuracy, examples, predictions
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


def test_answers_equal_greedy_generation(model, subset):
    """What the benchmark scores is what ``generate`` answers."""
    items = list(subset[:8])
    inputs = batch(items)
    generated = model.generate(**inputs, max_new_tokens=1)[:, -1]
    scored = quality_model.answer_logits(model, inputs).argmax(-1)
    assert torch.equal(generated, scored)


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
