"""The reduction pipeline: batching, invariants, edge cases, lazy projections, dtypes, stages."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from helpers_pipeline import (
    DIM,
    Row,
    assert_rows_equal,
    batch,
    make_row,
    offset,
    qk_source,
    row_out,
    single,
)

import pact
from pact import LayerInputs, PactConfig, Pipeline, StageConfig

# Settings a clusterer needs beyond its defaults to validate (the rest validate as {name}).
CLUSTERER_SETTINGS = {
    "tome": {"r": 2},
    "agglomerative": {"keep_ratio": 0.5},
}

ROW_SHAPES = [(2, 9, 3), (1, 5, 4), (4, 0, 2), (3, 12, 1)]
SIDES = ["left", "right", "left", "right"]


def stage_presets() -> list[str]:
    return [name for name in pact.list_presets() if PactConfig.load(name).stages]


def clusterer_config(name: str) -> dict:
    return {"name": name, **CLUSTERER_SETTINGS.get(name, {})}


def check_batch_matches_rows(stage: StageConfig, rows: list[Row], sides: list[str]) -> None:
    """Every row of the batched reduction equals that row reduced alone."""
    pipeline = Pipeline(stage)
    inputs = batch(rows, sides)
    together = pipeline(inputs)
    length = inputs.hidden.shape[1]
    for b, (row, side) in enumerate(zip(rows, sides, strict=True)):
        alone_inputs = single(row)
        alone = pipeline(alone_inputs)
        start = offset(row, side, length)
        assert_rows_equal(row_out(together, inputs, b, start), row_out(alone, alone_inputs, 0))
        for field in ("visual_in", "after_prune", "after_merge", "retrieved"):
            assert getattr(together.stats, field)[b] == getattr(alone.stats, field)[0], field


def rows_for_batch(m_rope: bool = False) -> list[Row]:
    rows = [make_row(*shape, seed=index) for index, shape in enumerate(ROW_SHAPES)]
    if m_rope:
        for row in rows:  # three components that differ, as M-RoPE's (t, h, w) do
            n = len(row.positions)
            row.positions = torch.stack([row.positions, row.positions * 2, 100 - row.positions], 1)
            assert row.positions.shape == (n, 3)
    return rows


@pytest.mark.parametrize("preset", stage_presets())
def test_batch_rows_equal_rows_alone_for_every_preset(preset):
    stage = PactConfig.load(preset).stages[0]
    check_batch_matches_rows(stage, rows_for_batch(), SIDES)


@pytest.mark.parametrize("clusterer", pact.list_clusterers())
@pytest.mark.parametrize("scorer", [None, *pact.list_scorers()])
def test_batch_rows_equal_rows_alone_for_every_component_pair(scorer, clusterer):
    vision = scorer is not None and pact.SCORERS.get(scorer).Config.reads_tower
    stage = StageConfig(
        layer=0,
        place="vision" if vision else "decoder",
        scorer=scorer,
        clusterer=clusterer_config(clusterer),
    )
    check_batch_matches_rows(stage, rows_for_batch(), SIDES)


@pytest.mark.parametrize("merger", pact.list_mergers())
def test_batch_rows_equal_rows_alone_for_every_merger(merger):
    stage = PactConfig.load("pact", [f"merger={merger}"]).stages[0]
    check_batch_matches_rows(stage, rows_for_batch(), SIDES)


@pytest.mark.parametrize("position_mode", ["keep", "mean", "renumber"])
def test_batch_rows_equal_rows_alone_with_m_rope_positions(position_mode):
    stage = PactConfig.load("pact", [f"position_mode={position_mode}"]).stages[0]
    check_batch_matches_rows(stage, rows_for_batch(m_rope=True), ["right", "left", "left", "left"])


def top_k_positions(norms: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` largest values, ties to the lower index (plain Python sort)."""
    ranked = sorted(range(len(norms)), key=lambda i: (-float(norms[i]), i))
    return sorted(ranked[:k])


def expected_keep(n: int, ratio: float) -> int:
    """``floor(ratio * n)`` in exact decimal arithmetic, at least 1 when ratio > 0."""
    kept = math.floor(Fraction(str(ratio)) * n)
    return max(kept, 1) if ratio > 0 and n else kept


@pytest.mark.parametrize(
    ("n_visual", "ratio"),
    [(1, 0.1), (2, 0.5), (3, 0.55), (7, 0.29), (10, 0.55), (100, 0.29), (9, 0.0), (9, 1.0)],
)
def test_norm_pruning_keeps_the_floor_of_ratio_top_tokens_and_every_text_token(n_visual, ratio):
    row = make_row(3, n_visual, 2, seed=n_visual, noise=1.0)
    inputs = single(row)
    reduction = Pipeline(StageConfig(layer=0, scorer="norm", keep_ratio=ratio))(inputs)

    visual = torch.nonzero(row.visual).flatten().tolist()
    norms = row.hidden[row.visual].norm(dim=-1)
    kept_visual = [visual[i] for i in top_k_positions(norms, expected_keep(n_visual, ratio))]
    text = torch.nonzero(~row.visual).flatten().tolist()
    want = sorted(text + kept_visual)

    slots = reduction.kept_slots[0].tolist()
    assert slots == want
    assert slots == sorted(slots)
    assert torch.equal(reduction.hidden[0], row.hidden[want])
    assert torch.equal(reduction.positions[0], row.positions[want])
    assert reduction.stats.visual_in == [n_visual]
    assert reduction.stats.after_prune == [len(kept_visual)]
    assert reduction.stats.after_merge == [len(kept_visual)]
    assert reduction.visual_mask[0].tolist() == [slot in kept_visual for slot in want]


def test_ties_in_importance_go_to_the_lower_position():
    row = make_row(2, 8, 2, seed=0)
    row.hidden[row.visual] = torch.ones(DIM)  # every visual token has the same norm
    reduction = Pipeline(StageConfig(layer=0, scorer="norm", keep_ratio=0.5))(single(row))
    assert reduction.kept_slots[0].tolist() == [0, 1, 2, 3, 4, 5, 10, 11]


@pytest.mark.parametrize("preset", ["pact", "dbdpc", "kmeans", "tome", "dbscan"])
def test_stats_agree_with_outputs_and_text_survives_unchanged(preset):
    rows = rows_for_batch()
    inputs = batch(rows, SIDES)
    reduction = pact.reduce(inputs, preset)
    stats = reduction.stats
    stage = PactConfig.load(preset).stages[0]
    for b in range(len(rows)):
        slots = reduction.kept_slots[b][reduction.kept_mask[b]]
        assert torch.equal(slots, torch.sort(slots).values) and slots.unique().numel() == len(slots)
        real_visual = inputs.visual_mask[b] & inputs.padding_mask[b]
        n_visual = int(real_visual.sum())
        assert stats.visual_in[b] == n_visual
        if stage.scorer is None:
            assert stats.after_prune[b] == n_visual
        else:
            assert stats.after_prune[b] == expected_keep(n_visual, stage.keep_ratio)
        visual_out = reduction.visual_mask[b][reduction.kept_mask[b]]
        assert stats.after_merge[b] == int(visual_out.sum())
        assert stats.after_merge[b] <= stats.after_prune[b] + stats.retrieved[b]
        # The mean merger turns size-1 inputs into sizes that count what each token holds.
        visual_sizes = reduction.sizes[b][reduction.kept_mask[b]][visual_out]
        assert float(visual_sizes.sum()) == stats.after_prune[b] + stats.retrieved[b]
        # Every non-visual slot (text, and padding too) survives untouched.
        others = torch.nonzero(~real_visual).flatten()
        assert set(others.tolist()) <= set(slots.tolist())
        where = torch.searchsorted(slots, others)
        assert torch.equal(reduction.hidden[b, where], inputs.hidden[b, others])
        assert torch.equal(reduction.positions[b, where], inputs.positions[b, others])
        assert torch.equal(reduction.sizes[b, where], torch.ones(len(others)))
    total_in = sum(stats.visual_in)
    assert stats.reduction_ratio == pytest.approx(1 - sum(stats.after_merge) / total_in)


def test_visual_flags_at_padding_count_for_nothing():
    rows = rows_for_batch()[:2]
    inputs = batch(rows, ["left", "right"])
    inputs.visual_mask[~inputs.padding_mask] = True  # a careless mask: padding marked visual
    reduction = pact.reduce(inputs, "pact")
    clean = pact.reduce(batch(rows, ["left", "right"]), "pact")
    assert reduction.stats.visual_in == clean.stats.visual_in
    assert reduction.stats.after_merge == clean.stats.after_merge
    assert torch.equal(reduction.visual_mask, clean.visual_mask)


@pytest.mark.parametrize("preset", stage_presets())
def test_no_visual_tokens_is_a_no_op(preset):
    row = make_row(5, 0, 3, seed=1)
    calls: list[bool] = []
    inputs = single(row, calls)
    reduction = pact.reduce(inputs, preset)
    assert torch.equal(reduction.kept_slots[0], torch.arange(8))
    assert torch.equal(reduction.hidden, inputs.hidden)
    assert torch.equal(reduction.positions, inputs.positions)
    assert torch.equal(reduction.sizes, torch.ones(1, 8))
    assert not reduction.visual_mask.any() and reduction.kept_mask.all()
    assert reduction.stats.visual_in == [0] and reduction.stats.after_merge == [0]
    assert reduction.stats.reduction_ratio == 0.0
    assert calls == []  # nothing to score or cluster: no projection is made


@pytest.mark.parametrize("preset", ["pact", "euti", "fastv", "dbdpc", "kmeans", "dbscan", "dpc"])
def test_one_visual_token_survives_as_itself(preset):
    row = make_row(2, 1, 2, seed=3)
    reduction = pact.reduce(single(row), preset)
    assert torch.equal(reduction.kept_slots[0], torch.arange(5))
    assert torch.equal(reduction.hidden[0], row.hidden)
    assert torch.equal(reduction.sizes[0], torch.ones(5))
    assert reduction.visual_mask[0].tolist() == row.visual.tolist()


def test_keep_ratio_zero_removes_every_visual_token_and_one_keeps_all():
    row = make_row(2, 6, 3, seed=4)
    text = torch.nonzero(~row.visual).flatten()
    none_left = Pipeline(StageConfig(layer=0, scorer="norm", keep_ratio=0.0))(single(row))
    assert torch.equal(none_left.kept_slots[0], text)
    assert torch.equal(none_left.hidden[0], row.hidden[text])
    assert none_left.stats.after_prune == [0] and none_left.stats.after_merge == [0]
    withdrawn = pact.reduce(single(row), "vtw")
    assert torch.equal(withdrawn.kept_slots[0], text)

    all_kept = Pipeline(StageConfig(layer=0, scorer="norm", keep_ratio=1.0))(single(row))
    assert torch.equal(all_kept.kept_slots[0], torch.arange(len(row.hidden)))
    assert torch.equal(all_kept.hidden[0], row.hidden)


@pytest.mark.parametrize("cluster_on", ["keys", "keys_rope", "hidden"])
def test_identical_visual_tokens_become_one_token_of_their_count(cluster_on):
    row = make_row(3, 7, 2, seed=5)
    token = torch.randn(DIM, generator=torch.Generator().manual_seed(0))
    row.hidden[row.visual] = token
    stage = StageConfig(layer=0, clusterer="dbdpc", cluster_on=cluster_on)
    reduction = Pipeline(stage)(single(row))
    slots = reduction.kept_slots[0].tolist()
    assert len(slots) == 6 and slots[:3] == [0, 1, 2] and slots[4:] == [10, 11]
    assert 3 <= slots[3] <= 9  # the cluster sits at its center's slot, a visual one
    if cluster_on != "keys_rope":  # equal densities: the lower position leads
        assert slots[3] == 3
    assert reduction.sizes[0].tolist() == [1, 1, 1, 7, 1, 1]
    torch.testing.assert_close(reduction.hidden[0, 3], token)
    assert reduction.visual_mask[0].tolist() == [False, False, False, True, False, False]


def test_cutoff_zero_keeps_every_distinct_token_as_its_own_cluster():
    row = make_row(2, 10, 2, seed=6, noise=1.0)
    stage = StageConfig(layer=0, clusterer={"name": "dbdpc", "cutoff": 0.0})
    reduction = Pipeline(stage)(single(row))
    assert torch.equal(reduction.kept_slots[0], torch.arange(14))
    assert torch.equal(reduction.hidden[0], row.hidden)
    assert torch.equal(reduction.sizes[0], torch.ones(14))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["text", "visual"])
def test_non_finite_hidden_states_raise_a_clear_error(bad, where):
    row = make_row(2, 5, 2, seed=7)
    row.hidden[1 if where == "text" else 3, 0] = bad
    with pytest.raises(ValueError, match="NaN"):
        pact.reduce(single(row), "pact")


@pytest.mark.parametrize("preset", ["pact", "fastv", "dbdpc", "kmeans", "dpc"])
def test_non_finite_values_at_padding_are_ignored(preset):
    rows = rows_for_batch()[:2]
    inputs = batch(rows, ["left", "right"])
    inputs.hidden[~inputs.padding_mask] = float("nan")  # and so are its queries and keys there
    inputs.qk = qk_source(inputs.hidden, inputs.positions)
    clean = batch(rows, ["left", "right"])
    got, want = pact.reduce(inputs, preset), pact.reduce(clean, preset)
    for b in range(2):
        assert_rows_equal(row_out(got, inputs, b), row_out(want, clean, b))


def test_m_rope_positions_keep_their_layout_and_the_centers_components():
    row = rows_for_batch(m_rope=True)[0]
    reduction = pact.reduce(single(row), "pact")
    assert reduction.positions.shape == (1, reduction.kept_slots.shape[1], 3)
    assert reduction.positions.dtype == row.positions.dtype
    assert torch.equal(reduction.positions[0], row.positions[reduction.kept_slots[0]])


def test_mean_positions_are_the_rounded_size_weighted_mean_per_component():
    row = rows_for_batch(m_rope=True)[3]
    row.hidden[row.visual] = row.hidden[row.visual][0]  # one cluster of every visual token
    stage = StageConfig(layer=0, clusterer="dbdpc", cluster_on="hidden", position_mode="mean")
    reduction = Pipeline(stage)(single(row))
    visual_positions = row.positions[row.visual].double()
    merged = reduction.positions[0][reduction.visual_mask[0]]
    assert merged.shape == (1, 3)
    assert torch.equal(merged[0], visual_positions.mean(dim=0).round().long())


@pytest.mark.parametrize(
    ("stage", "expected_calls"),
    [
        ({"scorer": "norm"}, []),
        ({"scorer": "norm", "clusterer": "dbdpc", "cluster_on": "hidden"}, []),
        ({"clusterer": "dbdpc"}, [True]),
        ({"clusterer": "dbdpc", "cluster_on": "keys"}, [False]),
        ({"scorer": "euti"}, [False]),
        ({"scorer": "euti", "clusterer": "dbdpc", "cluster_on": "keys"}, [False]),
        ({"scorer": "attention"}, [True]),
        ({"scorer": "attention", "clusterer": "dbdpc"}, [True]),
        ({"scorer": "euti", "clusterer": "dbdpc", "retrieval": True}, [False, True]),
    ],
)
def test_projections_are_made_lazily_and_cached(stage, expected_calls):
    calls: list[bool] = []
    inputs = single(make_row(2, 6, 2, seed=8), calls)
    pipeline = Pipeline(StageConfig(layer=0, **stage))
    first = pipeline(inputs)
    assert calls == expected_calls
    second = pipeline(inputs)  # the same QKSource: cached, not projected again
    assert calls == expected_calls
    assert torch.equal(first.kept_slots, second.kept_slots)


def test_keys_are_required_only_when_used():
    row = make_row(2, 6, 2, seed=9)
    no_qk = LayerInputs(row.hidden[None], row.visual[None])
    assert pact.reduce(no_qk, StageConfig(layer=0, scorer="norm")).stats.after_prune == [3]
    with pytest.raises(ValueError, match=r"inputs\.qk"):
        pact.reduce(no_qk, "dbdpc")
    with pytest.raises(ValueError, match=r"inputs\.qk"):
        pact.reduce(no_qk, "euti")


@pytest.mark.parametrize("preset", ["pact", "fastv", "tome"])
def test_bf16_hidden_gives_bf16_hidden_and_float32_sizes(preset):
    rows = rows_for_batch()
    inputs = batch(rows, SIDES)
    low = LayerInputs(
        hidden=inputs.hidden.bfloat16(),
        visual_mask=inputs.visual_mask,
        qk=qk_source(inputs.hidden.bfloat16(), inputs.positions),
        positions=inputs.positions,
        padding_mask=inputs.padding_mask,
    )
    reduction = pact.reduce(low, preset)
    assert reduction.hidden.dtype == torch.bfloat16
    assert reduction.sizes.dtype == torch.float32
    for b in range(len(rows)):  # text tokens come through bit for bit
        text = torch.nonzero(~inputs.visual_mask[b]).flatten()
        where = torch.searchsorted(reduction.kept_slots[b][reduction.kept_mask[b]], text)
        assert torch.equal(reduction.hidden[b, where], low.hidden[b, text])


def feed_back(reduction, inputs: LayerInputs) -> LayerInputs:
    """The next layer's inputs: the reduced sequence, sizes and positions carried over."""
    padding = reduction.kept_mask & inputs.padding_mask.gather(1, reduction.kept_slots)
    return LayerInputs(
        hidden=reduction.hidden,
        visual_mask=reduction.visual_mask,
        qk=qk_source(reduction.hidden, reduction.positions),
        positions=reduction.positions,
        sizes=reduction.sizes,
        padding_mask=padding,
    )


def visual_totals(inputs: LayerInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed size of the visual tokens and summed ``size x hidden``."""
    visual = (inputs.visual_mask & inputs.padding_mask).float()
    sizes = inputs.sizes * visual
    return sizes.sum(dim=1), (sizes[..., None] * inputs.hidden.double()).sum(dim=1)


def test_sizes_accumulate_over_the_stages_of_tome():
    inputs = batch(rows_for_batch(), SIDES)
    count, mass = visual_totals(inputs)
    config = PactConfig.load("tome")
    for stage in config.stages:
        reduction = Pipeline(stage)(inputs)
        inputs = feed_back(reduction, inputs)
        # Every original visual token is still counted once, and the size-weighted mean
        # merger conserves size x hidden summed over the visual tokens.
        new_count, new_mass = visual_totals(inputs)
        assert torch.equal(new_count, count)
        torch.testing.assert_close(new_mass, mass, rtol=1e-5, atol=1e-4)
    assert int(inputs.visual_mask.sum()) < int(count.sum())  # something was merged


def test_second_stage_merges_already_merged_tokens_by_size():
    rows = rows_for_batch()
    inputs = batch(rows, SIDES)
    count, mass = visual_totals(inputs)
    config = PactConfig.load(
        {
            "stages": [
                {"layer": 2, "clusterer": {"name": "dbdpc", "cutoff": 0.05}},
                {"layer": 5, "clusterer": {"name": "dbdpc", "cutoff": 1.5}, "cluster_on": "hidden"},
            ]
        }
    )
    first = Pipeline(config.stages[0])(inputs)
    middle = feed_back(first, inputs)
    assert (middle.sizes[middle.visual_mask] > 1).any()
    second = feed_back(Pipeline(config.stages[1])(middle), middle)
    new_count, new_mass = visual_totals(second)
    assert torch.equal(new_count, count)
    torch.testing.assert_close(new_mass, mass, rtol=1e-5, atol=1e-4)


def test_pruning_stages_sizes_sum_to_the_kept_and_retrieved_tokens():
    inputs = batch(rows_for_batch(), SIDES)
    reduction = pact.reduce(inputs, "pact")
    again = pact.reduce(feed_back(reduction, inputs), "dbdpc")
    kept = [
        a + r for a, r in zip(reduction.stats.after_prune, reduction.stats.retrieved, strict=True)
    ]
    for reduced in (reduction, again):
        sizes = (reduced.sizes * reduced.visual_mask).sum(dim=1)
        assert sizes.tolist() == kept


def test_reduce_picks_the_stage_and_rejects_configs_without_one():
    inputs = batch(rows_for_batch(), SIDES)
    third = pact.reduce(inputs, "tome", stage=3)
    want = Pipeline(PactConfig.load("tome").stages[3])(inputs)
    assert torch.equal(third.kept_slots, want.kept_slots)
    with pytest.raises(ValueError, match="stage must be in"):
        pact.reduce(inputs, "tome", stage=8)
    with pytest.raises(ValueError, match="no reduction stage"):
        pact.reduce(inputs, "none")
