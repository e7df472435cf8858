"""Batch > 1: every row of a padded batch is reduced exactly as if it ran alone.

Rows differ in length, number of images (two, one, none) and so in the number of visual
tokens each keeps; the batch is padded on the left or the right. Each row's logits at its
real positions, its reduction counts and its greedy continuation must equal the same row
run alone through the same hooked model.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers_hook import (
    FAMILY_TEXT,
    REPRESENTATIVE,
    ROWS,
    TOL,
    greedy,
    logits,
    make_batches,
    max_row_diff,
    tiny_model,
)

import pact

pytestmark = pytest.mark.usefixtures("single_thread")

EXACT_PRESETS = ("pact", "dbdpc", "euti", "fastv", "tome", "dpc", "agglomerative")


def reduced_counts(stats) -> list[tuple[int, int, int, int]]:
    """Per row: (visual in, after prune, retrieved, after merge) of a one-stage reduction."""
    first, last = stats[0], stats[-1]
    return list(
        zip(first.visual_in, first.after_prune, first.retrieved, last.after_merge, strict=True)
    )


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("preset", EXACT_PRESETS)
@pytest.mark.parametrize(("family", "text"), FAMILY_TEXT)
def test_batch_logits_equal_rows_alone(family, text, preset, padding_side):
    tiny = tiny_model(family, text)
    batches = make_batches(tiny, ROWS, padding_side)
    unreduced = logits(tiny, batches.batch)
    with pact.attached(tiny.model, preset) as handle:
        batched = logits(tiny, batches.batch)
        batch_counts = reduced_counts(handle.stats.last)
        alone, alone_counts = [], []
        for row in batches.alone:
            alone.append(logits(tiny, row))
            has_visual = bool(tiny.visual_mask(row).any())
            alone_counts.append(reduced_counts(handle.stats.last)[0] if has_visual else None)
    assert batched.shape == unreduced.shape  # the output is restored to the input length
    assert max_row_diff(batched, batches.real, alone) <= TOL
    # Each row's reduction is the one it gets alone; the text-only row has nothing to reduce.
    assert batch_counts[:2] == alone_counts[:2]
    assert batch_counts[2] == (0, 0, 0, 0)
    kept = [counts[3] for counts in batch_counts[:2]]
    assert kept[0] != kept[1]  # rows keep different numbers of tokens: padding is exercised
    assert sum(c[3] for c in batch_counts) < sum(c[0] for c in batch_counts)
    # The reduction changes what the model computes (else the comparison above is vacuous).
    assert (batched - unreduced)[batches.real].abs().max() > 1e-3


@pytest.mark.parametrize("preset", EXACT_PRESETS)
@pytest.mark.parametrize(("family", "text"), REPRESENTATIVE)
def test_batch_generate_equals_rows_alone(family, text, preset):
    """Greedy cached decoding of a left-padded batch: tokens and step logits per row."""
    tiny = tiny_model(family, text)
    batches = make_batches(tiny, ROWS, "left")
    width = batches.batch["input_ids"].shape[1]
    with pact.attached(tiny.model, preset):
        batched = greedy(tiny, batches.batch)
        alone = [greedy(tiny, row) for row in batches.alone]
    for row, single in enumerate(alone):
        assert torch.equal(batched.sequences[row, width:], single.sequences[0, -4:])
        for step, step_logits in enumerate(single.logits):
            assert (batched.logits[step][row] - step_logits[0]).abs().max() <= TOL


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize(("family", "text"), [("llava_next", "llama"), ("qwen2_vl", "qwen2")])
def test_kmeans_batch_runs_with_row_shapes(family, text, padding_side):
    """k-means (faiss) runs on a padded batch; only shapes and counts are asserted.

    faiss's k-means is not stable under the ~1e-7 differences that batching puts in the
    keys (a different matmul blocking): one flipped assignment moves a centroid and the
    clusters change. So a row in a batch and the same row alone may legitimately merge
    differently, and exact equality is not a property of this preset.
    """
    tiny = tiny_model(family, text)
    batches = make_batches(tiny, ROWS, padding_side)
    with pact.attached(tiny.model, "kmeans") as handle:
        batched = logits(tiny, batches.batch)
        generated = greedy(tiny, batches.batch, new_tokens=2) if padding_side == "left" else None
        stats = handle.stats.last[0]
    assert batched.shape[:2] == batches.batch["input_ids"].shape
    assert torch.isfinite(batched[batches.real]).all()
    visual = tiny.visual_mask(batches.batch).sum(1).tolist()
    assert stats.visual_in == visual
    for n, kept in zip(stats.visual_in, stats.after_merge, strict=True):
        assert (n == 0 and kept == 0) or 1 <= kept <= math.ceil(0.5 * n)
    if generated is not None:
        assert generated.sequences.shape == (len(ROWS), batches.batch["input_ids"].shape[1] + 2)
