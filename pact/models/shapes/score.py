"""Accuracy of the benchmark model on a split: overall, per question kind and per number of
objects, each with a 95% confidence interval over the questions."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from functools import lru_cache

import torch

from pact.models.shapes.model import answer_logits, batch
from pact.models.shapes.questions import KINDS, Example, make_example

SUBSET = 128
"""Size of the fixed test subset the regression tests use (its accuracy is on the card)."""
Z_95 = 1.959964
"""Standard normal quantile of a two-sided 95% interval."""


@lru_cache(maxsize=4)
def examples(split: str, size: int) -> tuple[Example, ...]:
    """The first ``size`` examples of ``split`` (cached: scenes are drawn once per process)."""
    return tuple(make_example(split, index) for index in range(size))


@torch.no_grad()
def answer_ids(model, items: tuple[Example, ...], batch_size: int = 64,
               device: str | torch.device = "cpu", after_batch=None) -> list[int]:  # fmt: skip
    """The greedy answer (argmax of the next-token logits) to each example, as a token id,
    over the tokens ``generate`` may emit (the generation config's ``suppress_tokens``, e.g.
    the image token, are left out), so that it is ``generate``'s first token.

    ``after_batch()`` is called after each batch's forward (to read a hook's stats).
    """
    suppressed = list(getattr(model.generation_config, "suppress_tokens", None) or [])
    answers: list[int] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        inputs = {k: v.to(device) for k, v in batch(list(chunk)).items()}
        logits = answer_logits(model, inputs)
        logits[:, suppressed] = float("-inf")
        answers += logits.argmax(dim=-1).tolist()
        if after_batch is not None:
            after_batch()
    return answers


def predictions(model, items: tuple[Example, ...], batch_size: int = 64,
                device: str | torch.device = "cpu", after_batch=None) -> list[bool]:  # fmt: skip
    """Whether the greedy answer is right, per example (see :func:`answer_ids`)."""
    answers = answer_ids(model, items, batch_size, device, after_batch)
    return [answer == ex.answer_id for answer, ex in zip(answers, items, strict=True)]


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default): good at small counts and
    near 0 or 1, where the normal approximation is not."""
    if total == 0:
        return (0.0, 1.0)
    share = correct / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    return (max(0.0, centre - half / (1 + z * z / total)),
            min(1.0, centre + half / (1 + z * z / total)))  # fmt: skip


def summarise(items: tuple[Example, ...], right: list[bool]) -> dict:
    """Accuracy overall, per question kind and per object count, each with its 95% Wilson
    interval, and the number right on the first :data:`SUBSET` items."""
    by_kind: dict[str, list[bool]] = defaultdict(list)
    by_objects: dict[int, list[bool]] = defaultdict(list)
    for ex, ok in zip(items, right, strict=True):
        by_kind[ex.kind].append(ok)
        by_objects[len(ex.scene.objects)].append(ok)

    def share(values: list[bool]) -> float:
        return round(sum(values) / len(values), 4)

    def interval(values: list[bool]) -> list[float]:
        return [round(bound, 4) for bound in wilson_interval(sum(values), len(values))]

    kinds = [kind for kind in KINDS if by_kind[kind]]
    return {
        "examples": len(items),
        "accuracy": share(right),
        "interval": interval(right),
        "by_kind": {kind: share(by_kind[kind]) for kind in kinds},
        "by_kind_interval": {kind: interval(by_kind[kind]) for kind in kinds},
        "by_objects": {str(n): share(by_objects[n]) for n in sorted(by_objects)},
        "by_objects_interval": {str(n): interval(by_objects[n]) for n in sorted(by_objects)},
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
