"""Accuracy of the benchmark model on a split, per question kind."""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import lru_cache

import torch

from pact.models.shapes.model import answer_logits, batch
from pact.models.shapes.questions import KINDS, Example, make_example

SUBSET = 64
"""Size of the fixed test subset the regression tests use (its accuracy is on the card)."""


@lru_cache(maxsize=4)
def examples(split: str, size: int) -> tuple[Example, ...]:
    """The first ``size`` examples of ``split`` (cached: scenes are drawn once per process)."""
    return tuple(make_example(split, index) for index in range(size))


@torch.no_grad()
def predictions(model, items: tuple[Example, ...], batch_size: int = 64,
                device: str | torch.device = "cpu", after_batch=None) -> list[bool]:  # fmt: skip
    """Whether the greedy answer (argmax of the next-token logits) is right, per example.

    ``after_batch()`` is called after each batch's forward (to read a hook's stats).
    """
    right: list[bool] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        inputs = {k: v.to(device) for k, v in batch(list(chunk)).items()}
        answers = answer_logits(model, inputs).argmax(dim=-1).tolist()
        right += [answer == ex.answer_id for answer, ex in zip(answers, chunk, strict=True)]
        if after_batch is not None:
            after_batch()
    return right


def summarise(items: tuple[Example, ...], right: list[bool]) -> dict:
    """Overall accuracy, accuracy per question kind, and on the first :data:`SUBSET` items."""
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for ex, ok in zip(items, right, strict=True):
        by_kind[ex.kind].append(ok)
    return {
        "examples": len(items),
        "accuracy": round(sum(right) / len(right), 4),
        "by_kind": {kind: round(sum(v) / len(v), 4) for kind in KINDS if (v := by_kind[kind])},
        f"first_{SUBSET}_correct": sum(right[:SUBSET]),
    }


def accuracy_by_kind(model, split: str, size: int, device: str | torch.device = "cpu") -> dict:
    """:func:`summarise` of the model's answers on the first ``size`` examples of ``split``."""
    items = examples(split, size)
    return summarise(items, predictions(model, items, device=device))


def blind_accuracy(items: tuple[Example, ...], train_size: int = 2000) -> float:
    """Accuracy of answering without the image: per question kind, the most frequent answer
    among the first ``train_size`` training examples. A model below it ignores the image."""
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for ex in examples("train", train_size):
        by_kind[ex.kind][ex.answer] += 1
    guess = {kind: answers.most_common(1)[0][0] for kind, answers in by_kind.items()}
    return sum(guess.get(ex.kind) == ex.answer for ex in items) / len(items)
