"""Token budgets: ``keep_tokens`` keeps an exact number of visual tokens of every image."""

from __future__ import annotations

import pytest
import torch
from helpers_hook import logits, make_batches, max_row_diff, tiny_model
from helpers_pipeline import Row, make_row, single
from test_pipeline import SIDES, check_batch_matches_rows

import pact
from pact import PactConfig, Pipeline, StageConfig
from pact.errors import ConfigError
from pact.models.tiny import FAMILIES

pytestmark = pytest.mark.usefixtures("single_thread")


def multi_image_row(images: list[int], seed: int) -> Row:
    """Text, then each image (a run of visual tokens) followed by one text token."""
    parts = [make_row(2, 0, 0, seed=seed)]
    for index, n_visual in enumerate(images):
        parts.append(make_row(0, n_visual, 1, seed=seed + 10 * (index + 1), noise=1.0))
    hidden = torch.cat([part.hidden for part in parts])
    visual = torch.cat([part.visual for part in parts])
    return Row(hidden, visual, torch.arange(len(hidden)))


def runs(mask: list[bool]) -> list[list[int]]:
    """Maximal runs of True, as lists of positions (a plain-Python reading of 'an image')."""
    found: list[list[int]] = []
    for position, flag in enumerate(mask):
        if flag and (position == 0 or not mask[position - 1]):
            found.append([])
        if flag:
            found[-1].append(position)
    return found


@pytest.mark.parametrize("tokens", [1, 3, 5, 50])
def test_keep_tokens_keeps_the_top_norms_of_each_image(tokens):
    row = multi_image_row([7, 4, 9], seed=3)
    reduction = Pipeline(StageConfig(layer=0, scorer="norm", keep_tokens=tokens))(single(row))
    norms = row.hidden.norm(dim=-1).tolist()
    want = [i for i in range(len(norms)) if not row.visual[i]]
    for image in runs(row.visual.tolist()):
        ranked = sorted(image, key=lambda i: (-norms[i], i))
        want += ranked[:tokens]
    assert reduction.kept_slots[0].tolist() == sorted(want)
    assert reduction.stats.after_prune == [sum(min(tokens, n) for n in (7, 4, 9))]


def test_budgets_are_per_image_while_ratios_are_per_row():
    row = multi_image_row([8, 2], seed=5)
    by_ratio = Pipeline(StageConfig(layer=0, scorer="norm", keep_ratio=0.4))(single(row))
    by_tokens = Pipeline(StageConfig(layer=0, scorer="norm", keep_tokens=2))(single(row))
    assert by_ratio.stats.after_prune == [4]  # floor(0.4 x 10), wherever the best lie
    assert by_tokens.stats.after_prune == [4]  # two of each image
    second_image = set(range(12, 14))
    assert second_image <= set(by_tokens.kept_slots[0].tolist())


@pytest.mark.parametrize("scorer", ["norm", "attention", "euti", "random"])
def test_batch_rows_equal_rows_alone_with_budgets(scorer):
    rows = [
        multi_image_row(images, seed) for seed, images in enumerate([[5, 3], [9], [], [2, 6, 4]])
    ]
    stage = StageConfig(layer=0, scorer=scorer, keep_tokens=3)
    check_batch_matches_rows(stage, rows, SIDES)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"keep_tokens": 4}, "needs a scorer"),
        ({"scorer": "norm", "keep_tokens": 4, "keep_ratio": 0.5}, "set one of keep_ratio"),
        ({"scorer": "withdraw", "keep_tokens": 4}, "fixed ratio"),
        ({"scorer": "norm", "keep_tokens": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_budgets_name_the_field(settings, message):
    with pytest.raises(ConfigError, match=message):
        PactConfig.load({"stages": [{"layer": 0, **settings}]})


def test_a_budget_overrides_a_presets_ratio_from_the_command_line_syntax():
    config = PactConfig.load("fastv", ["keep_ratio=null", "keep_tokens=64"])
    assert (config.stages[0].keep_ratio, config.stages[0].keep_tokens) == (None, 64)


# Every family: one image, any-resolution where the family has it, and two images with text
# between them (what chat templates write); the images differ in size where the family
# allows it, so the budget is checked against images of different token counts.
BUDGET_ROWS = [
    ["text:2", "image", "text:3"],
    ["text:1", "image", "text:1", "image:40x24", "text:2"],
]


@pytest.mark.parametrize("family", FAMILIES)
def test_budgets_are_exact_per_image_through_the_hook_at_batch_2(family):
    tiny = tiny_model(family)
    batches = make_batches(tiny, BUDGET_ROWS, "left")
    per_image = [runs(row.tolist()) for row in tiny.visual_mask(batches.batch)]
    tokens = min(len(image) for images in per_image for image in images) - 1
    config = {"stages": [{"layer": 1, "scorer": "norm", "keep_tokens": tokens}]}
    with pact.attached(tiny.model, config) as handle:
        batched = logits(tiny, batches.batch)
        stats = handle.stats.last[0]
        alone = [logits(tiny, row) for row in batches.alone]
    assert stats.visual_in == [sum(map(len, images)) for images in per_image]
    assert stats.after_prune == [tokens * len(images) for images in per_image]
    assert max_row_diff(batched, batches.real, alone) <= 1e-4


def test_images_are_the_runs_of_visual_tokens():
    mask = torch.tensor([[0, 1, 1, 0, 1, 0, 0, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]]).bool()
    got = pact.tensors.image_groups(mask).tolist()
    want = []
    for row in mask.tolist():
        groups = [-1] * len(row)
        for index, image in enumerate(runs(row)):
            for position in image:
                groups[position] = index
        want.append(groups)
    assert got == want
