"""SparseVLM's scorer, its rank-based count, the ``dpc_knn`` clusterer and the pipeline's
recycling step against their definitions written here with numpy and Python loops, the
configuration rules, and the preset through the hook.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_hook import logits, make_batches, max_row_diff, tiny_model
from test_scorers import MIXED_ROWS, as_numpy, make_layer

import pact
from pact import LayerInputs, PactConfig, Pipeline, StageConfig
from pact.clusterers.dpc_knn import DpcKnn
from pact.errors import ConfigError
from pact.scorers.sparsevlm import SparseVlm, row_raters

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------ references
def raters_reference(inputs: LayerInputs, row: int) -> list[int]:
    """Text after the image whose mean (over visual tokens) softmax-over-text similarity
    beats the mean; all the text if none does; the last real token if no text follows."""
    real = [i for i, flag in enumerate(inputs.padding_mask[row].tolist()) if flag]
    visual = [i for i, flag in enumerate(inputs.real_visual_mask[row].tolist()) if flag]
    text = [i for i in real if i > max(visual)]
    if not text:
        return [real[-1]]
    hidden = as_numpy(inputs.hidden[row])
    relevance = [0.0] * len(text)
    for v in visual:
        dots = [float(hidden[v] @ hidden[t]) for t in text]
        top = max(dots)
        exps = [math.exp(d - top) for d in dots]
        for j, e in enumerate(exps):
            relevance[j] += e / sum(exps) / len(visual)
    mean = sum(relevance) / len(relevance)
    chosen = [t for t, r in zip(text, relevance, strict=True) if r > mean]
    return chosen or text


def attention_rows_reference(inputs: LayerInputs, row: int, raters: list[int]) -> np.ndarray:
    """``[R, N]``: each rater's causal softmax attention over real keys (post-RoPE), averaged
    over query heads; query head ``h`` reads key head ``h // (Hq / Hkv)``."""
    queries = as_numpy(inputs.qk.queries(rotary=True))[row]
    keys = as_numpy(inputs.qk.keys(rotary=True))[row]
    q_heads, n, head_dim = queries.shape
    group = q_heads // keys.shape[0]
    real = inputs.padding_mask[row].tolist()
    rows = np.zeros((len(raters), n))
    for r, query in enumerate(raters):
        allowed = [j for j in range(n) if real[j] and j <= query]
        for h in range(q_heads):
            key_head = keys[h // group]
            scores = [queries[h, query] @ key_head[j] / math.sqrt(head_dim) for j in allowed]
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            for j, e in zip(allowed, exps, strict=True):
                rows[r, j] += e / sum(exps) / q_heads
    return rows


def dpc_knn_reference(
    features: np.ndarray, cluster_ratio: float = 0.1, neighbours: int | None = None
) -> list[int]:
    """Each token's center (index), by the definition: distances L2 / sqrt(F); density
    exp(-mean squared distance to the k nearest, itself included); parent distance to the
    nearest denser (equal densities: lower index denser), the densest the largest distance;
    centers the top density x distance (ties: lower index); each token its nearest center
    (ties: lower index), a center itself."""
    n, width = features.shape
    d = [[float(np.linalg.norm(features[i] - features[j])) / math.sqrt(width) for j in range(n)]
         for i in range(n)]  # fmt: skip
    clusters = min(n, math.floor(n * cluster_ratio + 1e-9) + 1)
    k = min(n, neighbours or clusters)
    density = [math.exp(-sum(x * x for x in sorted(d[i])[:k]) / k) for i in range(n)]
    order = sorted(range(n), key=lambda i: (-density[i], i))
    rank = {token: place for place, token in enumerate(order)}
    largest = max(max(line) for line in d)
    delta = [
        min((d[i][j] for j in range(n) if rank[j] < rank[i]), default=largest) for i in range(n)
    ]
    score = [density[i] * delta[i] for i in range(n)]
    centers = sorted(sorted(range(n), key=lambda i: (-score[i], i))[:clusters])
    roots = [min(centers, key=lambda c: (d[i][c], c)) for i in range(n)]
    return [i if i in centers else root for i, root in enumerate(roots)]


def roots_of(clustering) -> list[int]:
    return [int(clustering.centers[label]) for label in clustering.labels.tolist()]


# ------------------------------------------------------------------ raters and scores
@pytest.mark.parametrize("seed", range(3))
def test_raters_and_scores_follow_the_definition(seed):
    inputs = make_layer(seed, MIXED_ROWS, rotary=True)
    scores = SparseVlm().score(inputs)
    for row in range(inputs.batch_size):
        if not bool(inputs.real_visual_mask[row].any()):
            continue
        raters = raters_reference(inputs, row)
        assert row_raters(inputs, row).tolist() == raters
        want = attention_rows_reference(inputs, row, raters).mean(axis=0)
        visual = inputs.real_visual_mask[row]
        np.testing.assert_allclose(as_numpy(scores[row][visual]), want[visual.numpy()], atol=1e-6)


def test_only_the_relevant_text_rates():
    """Text tokens aligned with the image rate; the others (and the prefix) do not."""
    generator = torch.Generator().manual_seed(5)
    image = torch.randn(1, 8, generator=generator)
    hidden = torch.randn(1, 16, 8, generator=generator) * 0.1
    hidden[0, 2:10] = image + 0.1 * torch.randn(8, 8, generator=generator)
    hidden[0, [11, 14]] = image * 3.0
    visual = torch.zeros(1, 16, dtype=torch.bool)
    visual[0, 2:10] = True
    inputs = LayerInputs(hidden=hidden, visual_mask=visual)
    assert row_raters(inputs, 0).tolist() == [11, 14] == raters_reference(inputs, 0)


# ------------------------------------------------------------------ rank-based count
def duplicated_raters_layer(seed: int) -> LayerInputs:
    """Two rows; three text tokens of row 0 repeat one vector and one query (in every
    head), and the keys after the first of them repel that query, so the three attention
    rows are equal (to float32 precision) and rank(P) falls below the number of raters."""
    inputs = make_layer(seed, [(0, 2, 12, 6, 0), (3, 1, 9, 7, 0)], rotary=True)
    hidden, queries = inputs.hidden.clone(), inputs.qk.queries(rotary=True).clone()
    keys = inputs.qk.keys(rotary=True).clone()
    image_mean = hidden[0, 2:14].mean(dim=0)
    hidden[0, 14:] *= 0.1  # the other text tokens say little about the image
    query = queries[0, 0, 15].clone()
    for slot in (15, 17, 19):
        hidden[0, slot] = image_mean * 4.0
        queries[0, :, slot] = query
    keys[0, :, 16:] = -200.0 * query / query.norm()  # logits below -50: weight ~1e-22
    qk = pact.QKSource.from_tensors(queries, keys)
    return LayerInputs(hidden, inputs.visual_mask, qk=qk, padding_mask=inputs.padding_mask)


@pytest.mark.parametrize("scale", [0.2, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(2))
def test_rank_based_count_matches_numpy_matrix_rank(seed, scale):
    inputs = duplicated_raters_layer(seed)
    stage = StageConfig(layer=0, scorer={"name": "sparsevlm", "rank_scale": scale})
    reduction = Pipeline(stage)(inputs)
    for row in range(inputs.batch_size):
        raters = raters_reference(inputs, row)
        visual = np.flatnonzero(inputs.real_visual_mask[row].numpy())
        block = attention_rows_reference(inputs, row, raters)[:, visual].astype(np.float32)
        rank = int(np.linalg.matrix_rank(block))
        if row == 0:
            assert len(raters) >= 3 and rank <= len(raters) - 2  # the duplicates count once
        kept = len(visual) - math.floor(scale * (len(visual) - rank) + 1e-9)
        assert reduction.stats.after_prune[row] == kept
        # and the kept tokens are the best-scored ones
        scores = block.astype(np.float64).mean(axis=0)
        best = sorted(sorted(range(len(visual)), key=lambda i: (-scores[i], i))[:kept])
        slots = reduction.kept_slots[row][reduction.kept_mask[row]].tolist()
        assert [s for s in slots if s in set(visual.tolist())] == visual[best].tolist()


# ------------------------------------------------------------------ dpc_knn
@pytest.mark.parametrize(("ratio", "neighbours"), [(0.1, None), (0.3, None), (0.2, 3), (1.0, 2)])
@pytest.mark.parametrize("n", [1, 2, 5, 33, 80])
@pytest.mark.parametrize("seed", range(2))
def test_dpc_knn_matches_its_definition(seed, n, ratio, neighbours):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 6, generator=generator) * 3
    features = centers[torch.randint(0, 4, (n,), generator=generator)]
    features = features + torch.randn(n, 6, generator=generator)
    clusterer = DpcKnn({"cluster_ratio": ratio, "neighbours": neighbours})
    clustering = clusterer.cluster(features, torch.ones(n))
    clustering.check()
    assert roots_of(clustering) == dpc_knn_reference(features.double().numpy(), ratio, neighbours)
    assert clustering.centers.numel() == min(n, math.floor(n * ratio + 1e-9) + 1)


def test_dpc_knn_ties_go_to_the_lower_index():
    """Duplicated tokens have equal densities: the lower index leads, deterministically."""
    base = torch.tensor([[0.0, 0.0], [0.0, 0.1], [5.0, 5.0], [5.0, 5.1], [9.0, 0.0]])
    features = base[[0, 1, 0, 2, 3, 2, 4, 4, 1, 3, 0]]
    clustering = DpcKnn({"cluster_ratio": 0.2}).cluster(features, torch.ones(11))
    assert roots_of(clustering) == dpc_knn_reference(features.double().numpy(), 0.2)
    assert roots_of(clustering) == roots_of(
        DpcKnn({"cluster_ratio": 0.2}).cluster(features, torch.ones(11))
    )


# ------------------------------------------------------------------ the recycling step
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize(("keep_ratio", "fraction"), [(0.5, 0.3), (0.25, 1.0), (0.8, 0.1)])
def test_recycling_folds_the_best_pruned_tokens_into_their_clusters(keep_ratio, fraction, weighted):
    inputs = make_layer(4, [(0, 3, 40, 5, 0), (6, 2, 30, 4, 6)], dim=6)
    generator = torch.Generator().manual_seed(1)
    inputs.sizes = torch.randint(1, 4, inputs.sizes.shape, generator=generator).float()
    stage = StageConfig(
        layer=0, scorer="norm", keep_ratio=keep_ratio, cluster_on="hidden",
        recycling={"fraction": fraction, "clusterer": {"name": "dpc_knn", "cluster_ratio": 0.2}},
        merger={"name": "mean", "weighted": weighted},
    )  # fmt: skip
    reduction = Pipeline(stage)(inputs)
    hidden, sizes = as_numpy(inputs.hidden), as_numpy(inputs.sizes)
    for row in range(inputs.batch_size):
        visual = np.flatnonzero(inputs.real_visual_mask[row].numpy()).tolist()
        norms = {s: float(np.linalg.norm(hidden[row, s])) for s in visual}
        ranked = sorted(visual, key=lambda s: (-norms[s], s))
        n_keep = pact.tensors.keep_count(len(visual), keep_ratio)
        kept, pruned = ranked[:n_keep], ranked[n_keep:]
        recycled = sorted(pruned[: min(len(pruned), int(fraction * len(pruned)) + 1)])
        roots = dpc_knn_reference(hidden[row, recycled], 0.2)
        members: dict[int, list[int]] = {}
        for token, root in zip(recycled, roots, strict=True):
            members.setdefault(recycled[root], []).append(token)
        real = np.flatnonzero(inputs.padding_mask[row].numpy()).tolist()
        text = [s for s in real if s not in visual]
        expected = {s: (hidden[row, s], sizes[row, s]) for s in text + kept}
        for center, group in members.items():
            weights = sizes[row, group] if weighted else np.ones(len(group))
            mean = (hidden[row, group] * weights[:, None]).sum(axis=0) / weights.sum()
            expected[center] = (mean, sizes[row, group].sum())
        # Padding slots travel along (still padding); the real ones are compared.
        mask = reduction.kept_mask[row] & inputs.padding_mask[row, reduction.kept_slots[row]]
        slots = reduction.kept_slots[row][mask].tolist()
        assert slots == sorted(expected)
        for got_hidden, got_size, slot in zip(
            reduction.hidden[row][mask], reduction.sizes[row][mask], slots, strict=True
        ):
            np.testing.assert_allclose(as_numpy(got_hidden), expected[slot][0], atol=1e-5)
            assert float(got_size) == pytest.approx(expected[slot][1])
        assert reduction.stats.after_merge[row] == len(kept) + len(members)


def test_the_preset_keeps_the_official_192_token_schedule():
    """576 visual tokens: 300, 200, 110 kept at the three stages, plus the recycled clusters
    (int(0.3 x deleted) + 1 tokens recycled into int(recycled / 10) + 1)."""
    config = PactConfig.load("sparsevlm")
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 5 + 576 + 30, 16, generator=generator)
    visual = torch.zeros(1, hidden.shape[1], dtype=torch.bool)
    visual[0, 5:581] = True
    entering = 576
    for stage, kept in zip(config.stages, [300, 200, 110], strict=True):
        tokens = hidden.shape[1]
        queries = torch.randn(1, 4, tokens, 8, generator=generator)
        keys = torch.randn(1, 2, tokens, 8, generator=generator)
        inputs = LayerInputs(hidden, visual, qk=pact.QKSource.from_tensors(queries, keys))
        reduction = Pipeline(stage)(inputs)
        recycled = int((entering - kept) * 0.3) + 1
        assert reduction.stats.visual_in == [entering]
        assert reduction.stats.after_prune == [kept]
        assert reduction.stats.after_merge == [kept + int(recycled / 10) + 1]
        entering = reduction.stats.after_merge[0]
        hidden, visual = reduction.hidden, reduction.visual_mask
    assert entering == 113


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("stage", "needles"),
    [
        ({"scorer": {"name": "sparsevlm", "rank_scale": 0.5}, "keep_ratio": 0.3},
         ["rank_scale", "remove keep_ratio"]),
        ({"scorer": {"name": "sparsevlm", "rank_scale": 0.5}, "keep_tokens": 64},
         ["rank_scale", "remove keep_tokens"]),
        ({"scorer": {"name": "sparsevlm", "rank_scale": 1.5}}, ["stages.0.scorer.rank_scale"]),
        ({"recycling": {}}, ["recycling", "scorer"]),
        ({"scorer": "sparsevlm", "recycling": {}, "retrieval": True,
          "clusterer": "dbdpc"}, ["retrieval", "recycling"]),
        ({"scorer": "sparsevlm", "recycling": {"clusterer": {"name": "dpc_knn",
          "cluster_ratio": 0}}}, ["stages.0.recycling.clusterer.cluster_ratio"]),
        ({"scorer": "sparsevlm", "recycling": {"fraction": 0}},
         ["stages.0.recycling.fraction"]),
    ],
)  # fmt: skip
def test_bad_settings_are_refused_naming_the_field(stage, needles):
    with pytest.raises(ConfigError) as error:
        PactConfig.load({"stages": [{"layer": 3, **stage}]})
    for needle in needles:
        assert needle in str(error.value)


def test_rank_scale_leaves_keep_ratio_unset_and_round_trips():
    config = PactConfig.load("sparsevlm", ["scorer.rank_scale=0.5", "keep_ratio=null"])
    assert [s.keep_ratio for s in config.stages] == [None, None, None]
    assert PactConfig.load(config.to_yaml()) == config
    default = StageConfig(layer=0, scorer="sparsevlm", recycling={})
    assert (default.keep_ratio, default.recycling.clusterer.name) == (0.5, "dpc_knn")


def test_a_scorer_budget_beyond_its_groups_is_refused():
    class Greedy(SparseVlm):
        # The protocol's default path (budget_for, then score_for), not SparseVLM's one pass.
        budget_and_scores = pact.Scorer.budget_and_scores

        def budget_for(self, inputs, budget):
            return pact.tensors.Budget(
                budget.groups, [[n + 1 for n in row] for row in budget.counts]
            )

    inputs = make_layer(0, MIXED_ROWS, rotary=True)
    pipeline = Pipeline(StageConfig(layer=0, scorer={"name": "sparsevlm", "rank_scale": 0.5}))
    pipeline.scorer = Greedy({"rank_scale": 0.5})
    with pytest.raises(ValueError, match=r"keep counts \[7\] for groups of \[6\] visual tokens"):
        pipeline(inputs)


# ------------------------------------------------------------------ through the hook
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_rank_based_sparsevlm_through_the_hook_batch_rows_equal_rows_alone(family):
    tiny = tiny_model(family)
    rows = [["text:3", "image", "text:4"], ["text:2", "image", "text:1", "image", "text:5"],
            ["text:6"]]  # fmt: skip
    batches = make_batches(tiny, rows, "left")
    config = PactConfig.load(
        "sparsevlm",
        ["stages.0.layer=1", "stages.1.layer=3", "stages.2.layer=5", "keep_ratio=null",
         "scorer.rank_scale=0.9"],
    )  # fmt: skip
    with pact.attached(tiny.model, config) as handle:
        batched = logits(tiny, batches.batch)
        stats = handle.stats.last
        alone = [logits(tiny, row) for row in batches.alone]
    assert max_row_diff(batched, batches.real, alone) <= 1e-4
    first = stats[0]
    assert first.after_prune[0] < first.visual_in[0]  # the rank-based count deletes
    assert first.after_merge[0] > first.after_prune[0]  # and the recycled clusters join
