"""DART, DivPrune and PyramidDrop against their definitions written here, and through the hook.

Each reference follows the paper's definition (as pact reads it, see the scorers' modules)
with plain numpy and Python loops, independently of the scorers' torch code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_hook import logits, make_batches, max_row_diff, tiny_model
from test_budgets import multi_image_row
from test_scorers import MIXED_ROWS, as_numpy, make_layer

import pact
from pact import LayerInputs, PactConfig, Pipeline, StageConfig
from pact.models.tiny import FAMILIES

pytestmark = pytest.mark.usefixtures("single_thread")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))


def largest_first(values: list[float], candidates: list[int]) -> list[int]:
    """``candidates`` sorted by ``values`` descending, ties to the lower index."""
    return sorted(candidates, key=lambda i: (-values[i], i))


def divprune_reference(features: np.ndarray, count: int) -> list[int]:
    """Max-min diversity, greedy: start from the token farthest from its nearest neighbour,
    then add the token farthest from everything chosen (cosine distance)."""
    n = len(features)
    distance = 1.0 - cosine(features, features)
    if n == 1:
        return [0][:count]
    nearest = [min(distance[i, j] for i in range(n) if i != j) for j in range(n)]
    chosen = [int(np.argmax(nearest))]
    while len(chosen) < count:
        rest = [j for j in range(n) if j not in chosen]
        gaps = {j: min(distance[i, j] for i in chosen) for j in rest}
        chosen.append(max(rest, key=lambda j: (gaps[j], -j)))
    return sorted(chosen[:count])


def dart_reference(inputs: LayerInputs, row: int, slots: list[int], count: int) -> list[int]:
    """DART with 4 image and 4 text pivots: key L1 norms (post-RoPE, all heads) pick pivots,
    each pivot in turn takes its share of the rest, least cosine-similar hidden states."""
    keys = as_numpy(inputs.qk.keys(rotary=True))[row]  # [H, N, d]
    norms = np.abs(keys).sum(axis=(0, 2)).tolist()
    hidden = as_numpy(inputs.hidden)[row]
    real = inputs.padding_mask[row].tolist()
    visual = [i for i, flag in enumerate(inputs.real_visual_mask[row].tolist()) if flag]
    after = [i for i in range(len(real)) if real[i] and i > max(visual)]
    image_pivots = largest_first(norms, slots)[: min(4, count)]
    text_pivots = largest_first(norms, after)[:4]
    leaders = image_pivots + text_pivots
    rest = count - len(image_pivots)
    kept, free = list(image_pivots), [s for s in slots if s not in image_pivots]
    for index, leader in enumerate(leaders):
        share = rest // len(leaders) + (1 if index < rest % len(leaders) else 0)
        similarity = cosine(hidden[free], hidden[[leader]])[:, 0].tolist()
        ranked = sorted(range(len(free)), key=lambda k: (similarity[k], k))[:share]
        taken = [free[k] for k in ranked]
        kept += taken
        free = [s for s in free if s not in taken]
    return sorted(kept)


def kept_visual(reduction, inputs: LayerInputs, row: int) -> list[int]:
    slots = reduction.kept_slots[row][reduction.kept_mask[row]].tolist()
    return [s for s in slots if bool(inputs.real_visual_mask[row, s])]


def expected_visual(name: str, inputs: LayerInputs, row: int, slots: list[int], count: int):
    """What the definition of ``name`` keeps of the visual ``slots`` of ``row``."""
    if name == "dart":
        return dart_reference(inputs, row, slots, count)
    picked = divprune_reference(as_numpy(inputs.hidden[row, slots]), count)
    return sorted(slots[k] for k in picked)


@pytest.mark.parametrize("ratio", [0.0, 0.098, 0.222, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("name", ["dart", "divprune"])
def test_dart_and_divprune_keep_what_their_definitions_keep(name, ratio):
    inputs = make_layer(11, MIXED_ROWS, rotary=True)
    reduction = Pipeline(StageConfig(layer=0, scorer=name, keep_ratio=ratio))(inputs)
    for row in range(inputs.batch_size):
        visual = torch.nonzero(inputs.real_visual_mask[row]).flatten().tolist()
        if not visual:
            continue
        count = pact.tensors.keep_count(len(visual), ratio)
        assert kept_visual(reduction, inputs, row) == expected_visual(
            name, inputs, row, visual, count
        )
        assert reduction.stats.after_prune[row] == count  # exactly the budget


@pytest.mark.parametrize("tokens", [1, 2, 5])
@pytest.mark.parametrize("name", ["dart", "divprune"])
def test_dart_and_divprune_budgets_per_image(name, tokens):
    row = multi_image_row([7, 5, 9], seed=2)
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(1, 2, len(row.hidden), 4, generator=generator)
    inputs = LayerInputs(
        hidden=row.hidden[None],
        visual_mask=row.visual[None],
        qk=pact.QKSource.from_tensors(keys.repeat(1, 2, 1, 1), keys),
    )
    groups = pact.tensors.image_groups(row.visual[None])[0].tolist()
    images = [[i for i, g in enumerate(groups) if g == image] for image in range(3)]
    reduction = Pipeline(StageConfig(layer=0, scorer=name, keep_tokens=tokens))(inputs)
    want = []
    for image in images:
        want += expected_visual(name, inputs, 0, image, min(tokens, len(image)))
    assert kept_visual(reduction, inputs, 0) == sorted(want)


def test_divprune_keeps_one_of_each_set_of_duplicates_first():
    """Three distinct directions, each repeated: the first three picks cover all three."""
    generator = torch.Generator().manual_seed(3)
    directions = torch.randn(3, 8, generator=generator)
    labels = [0, 0, 1, 0, 2, 2, 1, 0, 2]
    lengths = torch.arange(1, 10, dtype=torch.float32)[:, None]  # norms do not matter
    hidden = (directions[torch.tensor(labels)] * lengths)[None]
    inputs = LayerInputs(hidden=hidden, visual_mask=torch.ones(1, 9, dtype=torch.bool))
    reduction = Pipeline(StageConfig(layer=0, scorer="divprune", keep_tokens=3))(inputs)
    assert sorted(labels[k] for k in reduction.kept_slots[0].tolist()) == [0, 1, 2]


# The presets through the hook at batch 3 (two images, one, none), left or right padding;
# PyramidDrop's quarters of 28 layers become layers 2, 4, 6 of the tiny 8-layer decoders,
# SparseVLM's 3, 7, 16 layers 1, 3, 5 (each recycling the pruned tokens it best scores).
HOOK_CONFIGS = {
    "dart": [],
    "divprune": [],
    "pyramiddrop": ["stages.0.layer=2", "stages.1.layer=4", "stages.2.layer=6"],
    "fastv": [],
    "sparsevlm": ["stages.0.layer=1", "stages.1.layer=3", "stages.2.layer=5"],
}
ROWS = [["text:3", "image", "text:4"], ["text:2", "image", "text:1", "image", "text:5"],
        ["text:6"]]  # fmt: skip


@pytest.mark.parametrize("preset", list(HOOK_CONFIGS))
@pytest.mark.parametrize("family", FAMILIES)
def test_presets_through_the_hook_batch_rows_equal_rows_alone(family, preset):
    # Families alternate between left and right padding: both sides, half the runs.
    padding_side = ("left", "right")[
        (FAMILIES.index(family) + list(HOOK_CONFIGS).index(preset)) % 2
    ]
    tiny = tiny_model(family)
    batches = make_batches(tiny, ROWS, padding_side)
    config = PactConfig.load(preset, HOOK_CONFIGS[preset])
    unreduced = logits(tiny, batches.batch)
    with pact.attached(tiny.model, config) as handle:
        batched = logits(tiny, batches.batch)
        stats = handle.stats.last
        alone = [logits(tiny, row) for row in batches.alone]
    assert max_row_diff(batched, batches.real, alone) <= 1e-4
    assert len(stats) == len(config.stages)
    assert stats[-1].after_merge[0] < stats[0].visual_in[0]
    assert (batched - unreduced)[batches.real].abs().max() > 1e-4
