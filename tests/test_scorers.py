"""Scorers against direct, independently written computations of their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pact import SCORERS, LayerInputs, Pipeline, QKSource, StageConfig, TowerAttention
from pact.scorers.attention import Attention
from pact.scorers.euti import Euti
from pact.scorers.norm import Norm
from pact.scorers.random import Random
from pact.scorers.withdraw import Withdraw


def make_layer(
    seed: int,
    rows: list[tuple[int, int, int, int, int]],
    q_heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 8,
    dim: int = 16,
    dtype: torch.dtype = torch.float32,
    rotary: bool = False,
) -> LayerInputs:
    """A padded batch. Each row: (left pad, text before, visual, text after, right pad)."""
    tokens = {sum(row) for row in rows}
    assert len(tokens) == 1
    n = tokens.pop()
    batch = len(rows)
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, n, dim, generator=generator) * 2.0
    queries = torch.randn(batch, q_heads, n, head_dim, generator=generator)
    keys = torch.randn(batch, kv_heads, n, head_dim, generator=generator)
    visual = torch.zeros(batch, n, dtype=torch.bool)
    padding = torch.ones(batch, n, dtype=torch.bool)
    for b, (left, before, n_visual, _, right) in enumerate(rows):
        padding[b, :left] = False
        padding[b, n - right :] = False
        visual[b, left + before : left + before + n_visual] = True
    visual[0, -1] |= not bool(padding[0, -1])  # a visual flag left on padding is ignored
    qk = QKSource.from_tensors(
        queries.to(dtype),
        keys.to(dtype),
        # Distinct "rotated" tensors: each scorer must read the pair its definition names.
        queries_rotary=(queries.flip(2) * 0.7).to(dtype) if rotary else None,
        keys_rotary=(keys.flip(2) * 1.3).to(dtype) if rotary else None,
    )
    # A vision stage's signal too (read by visionzip only): [CLS] attention and the mean.
    tower = TowerAttention(
        torch.rand(batch, n, generator=generator), torch.rand(batch, n, generator=generator)
    )
    return LayerInputs(
        hidden=hidden.to(dtype), visual_mask=visual, qk=qk, padding_mask=padding, tower=tower
    )


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.double().numpy()


def euti_reference(inputs: LayerInputs) -> np.ndarray:
    """method.md §1, row by row: T = real tokens up to the last visual token (pre-RoPE)."""
    hidden = as_numpy(inputs.hidden)
    queries, keys = (as_numpy(t) for t in inputs.qk.get(rotary=False))
    batch, q_heads, n, head_dim = queries.shape
    keys = np.repeat(keys, q_heads // keys.shape[1], axis=1)  # GQA: key head h // group
    visual = (inputs.visual_mask & inputs.padding_mask).numpy()
    padding = inputs.padding_mask.numpy()
    scores = np.zeros((batch, n))
    for b in range(batch):
        if not visual[b].any():
            continue
        last_visual = np.flatnonzero(visual[b]).max()
        prefix = [i for i in range(n) if padding[b, i] and i <= last_visual]
        attention = np.zeros(n)
        for h in range(q_heads):
            global_query = queries[b, h, prefix].mean(axis=0)
            logits = keys[b, h, prefix] @ global_query / math.sqrt(head_dim)
            weights = np.exp(logits - logits.max())
            attention[prefix] += weights / weights.sum() / q_heads
        scores[b] = attention * np.linalg.norm(hidden[b], axis=1)
    return scores


def rotary_heads(inputs: LayerInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Post-RoPE queries, keys repeated to the query heads (GQA), and the padding mask."""
    queries, keys = (as_numpy(t) for t in inputs.qk.get(rotary=True))
    keys = np.repeat(keys, queries.shape[1] // keys.shape[1], axis=1)
    return queries, keys, inputs.padding_mask.numpy()


def fastv_reference(inputs: LayerInputs) -> np.ndarray:
    """Full N x N causal attention (post-RoPE), padding masked; mean over heads and real rows."""
    queries, keys, padding = rotary_heads(inputs)
    batch, q_heads, n, head_dim = queries.shape
    received = np.zeros((batch, n))
    for b in range(batch):
        real = np.flatnonzero(padding[b])
        if not len(real):  # an all-padding row receives nothing
            continue
        allowed = np.tril(np.ones((n, n), dtype=bool)) & padding[b][None, :]
        for h in range(q_heads):
            logits = queries[b, h] @ keys[b, h].T / math.sqrt(head_dim)
            logits = np.where(allowed, logits, -np.inf)
            for i in real:
                weights = np.exp(logits[i] - logits[i].max())
                received[b] += weights / weights.sum() / q_heads
        received[b] /= len(real)
    return received


def fastv_last_reference(inputs: LayerInputs) -> np.ndarray:
    """FastV as published: softmax of the last real token's logits (post-RoPE) over the real
    tokens, mean over heads."""
    queries, keys, padding = rotary_heads(inputs)
    batch, q_heads, n, head_dim = queries.shape
    received = np.zeros((batch, n))
    for b in range(batch):
        real = np.flatnonzero(padding[b])
        last = real.max() if len(real) else None
        if last is None:
            continue
        for h in range(q_heads):
            logits = keys[b, h, real] @ queries[b, h, last] / math.sqrt(head_dim)
            weights = np.exp(logits - logits.max())
            received[b, real] += weights / weights.sum() / q_heads
    return received


def assert_close_on_visual(got: torch.Tensor, expected: np.ndarray, inputs: LayerInputs) -> None:
    """Scorers promise only the real visual entries; those must match, all must be finite."""
    assert got.dtype == torch.float32
    assert got.shape == inputs.visual_mask.shape
    visual = inputs.real_visual_mask.numpy()
    assert bool(torch.isfinite(got).all())
    np.testing.assert_allclose(got.numpy()[visual], expected[visual], rtol=2e-5, atol=1e-7)


# (left pad, text before, visual, text after, right pad); every row has 16 tokens.
MIXED_ROWS = [
    (0, 3, 6, 7, 0),  # text around the image
    (4, 1, 5, 6, 0),  # left padding
    (0, 2, 4, 1, 9),  # right padding
    (2, 0, 14, 0, 0),  # the image first, nothing after it
    (0, 5, 0, 11, 0),  # no visual token at all
]


@pytest.mark.parametrize(("q_heads", "kv_heads"), [(4, 4), (4, 2), (6, 1)])
def test_euti_matches_its_formula(q_heads, kv_heads):
    inputs = make_layer(0, MIXED_ROWS, q_heads=q_heads, kv_heads=kv_heads, rotary=True)
    assert_close_on_visual(Euti().score(inputs), euti_reference(inputs), inputs)


row_layout = st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 8), st.integers(0, 4))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    layouts=st.lists(row_layout, min_size=1, max_size=4),
    heads=st.sampled_from([(2, 2), (4, 2), (4, 1), (8, 2)]),
)
def test_euti_and_fastv_on_random_batches(seed, layouts, heads):
    longest = max(sum(layout) for layout in layouts) + 1
    rows = [(*layout, longest - sum(layout)) for layout in layouts]  # right-pad the rest
    inputs = make_layer(seed, rows, q_heads=heads[0], kv_heads=heads[1], rotary=True)
    assert_close_on_visual(Euti().score(inputs), euti_reference(inputs), inputs)
    fastv = Attention({"query": "all", "query_chunk": 3}).score(inputs)
    assert_close_on_visual(fastv, fastv_reference(inputs), inputs)
    assert_close_on_visual(Attention().score(inputs), fastv_last_reference(inputs), inputs)


def test_euti_only_reads_the_prefix():
    """Tokens after the last visual token change neither the global query nor the softmax."""
    inputs = make_layer(1, [(0, 3, 6, 7, 0)])
    before = Euti().score(inputs)
    queries, keys = inputs.qk.get(rotary=False)
    queries, keys = queries.clone(), keys.clone()
    queries[:, :, 9:] = 100.0
    keys[:, :, 9:] = -100.0
    changed = LayerInputs(
        hidden=inputs.hidden,
        visual_mask=inputs.visual_mask,
        qk=QKSource.from_tensors(queries, keys),
    )
    torch.testing.assert_close(Euti().score(changed)[:, :9], before[:, :9])


@pytest.mark.parametrize("query_chunk", [1, 3, 5, 1024])
def test_fastv_matches_full_attention_matrix(query_chunk):
    inputs = make_layer(2, MIXED_ROWS, rotary=True)
    got = Attention({"query": "all", "query_chunk": query_chunk}).score(inputs)
    assert_close_on_visual(got, fastv_reference(inputs), inputs)


def test_fastv_chunking_does_not_change_the_answer():
    inputs = make_layer(3, MIXED_ROWS, q_heads=8, kv_heads=2, rotary=True)
    whole = Attention({"query": "all", "query_chunk": 1024}).score(inputs)
    for chunk in (1, 2, 7):
        torch.testing.assert_close(
            Attention({"query": "all", "query_chunk": chunk}).score(inputs),
            whole,
            rtol=1e-6,
            atol=1e-7,
        )


def test_fastv_as_published_reads_the_last_real_token_only():
    inputs = make_layer(4, MIXED_ROWS, rotary=True)
    assert_close_on_visual(Attention().score(inputs), fastv_last_reference(inputs), inputs)
    queries, keys = inputs.qk.get(rotary=True)
    changed = queries.clone()
    last = [int(torch.nonzero(row).max()) for row in inputs.padding_mask]
    for b, position in enumerate(last):  # every query but the last real one
        keep = changed[b, :, position].clone()
        changed[b] = 50.0
        changed[b, :, position] = keep
    other = LayerInputs(
        hidden=inputs.hidden,
        visual_mask=inputs.visual_mask,
        qk=QKSource.from_tensors(changed, keys),
        padding_mask=inputs.padding_mask,
    )
    torch.testing.assert_close(Attention().score(other), Attention().score(inputs))
    with pytest.raises(ValueError, match="query_chunk applies to query: all"):
        Attention({"query_chunk": 4})


def test_norm_is_the_hidden_norm():
    inputs = make_layer(4, MIXED_ROWS)
    expected = np.linalg.norm(as_numpy(inputs.hidden), axis=-1)
    assert_close_on_visual(Norm().score(inputs), expected, inputs)


REFERENCES = {
    "euti": euti_reference,
    "attention": fastv_last_reference,
    "norm": lambda x: np.linalg.norm(as_numpy(x.hidden), axis=-1),
    "visionzip": lambda x: as_numpy(x.tower.cls),  # [CLS] attention where the tower has one
}
"""Independent computations of the scorers that have one (random and withdraw are checked
by their own tests)."""


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", SCORERS.names())
def test_every_scorer_gives_finite_float32_scores_of_the_batch_shape(name, dtype):
    inputs = make_layer(5, MIXED_ROWS, dtype=dtype, rotary=True)
    scores = SCORERS.get(name)().score(inputs)
    assert scores.dtype == torch.float32
    assert scores.shape == inputs.visual_mask.shape
    assert bool(torch.isfinite(scores).all())
    # The computation happens in float32 on the (exactly representable) half values.
    reference = REFERENCES.get(name)
    if reference is not None:
        assert_close_on_visual(scores, reference(inputs), inputs)


def test_withdraw_removes_every_visual_token_in_a_pipeline():
    inputs = make_layer(6, MIXED_ROWS)
    stage = StageConfig(layer=0, scorer="withdraw")
    assert stage.keep_ratio == 0.0
    assert torch.equal(Withdraw().score(inputs), torch.zeros(inputs.visual_mask.shape))
    reduction = Pipeline(stage)(inputs)
    assert not bool(reduction.visual_mask.any())
    assert reduction.stats.after_merge == [0] * len(MIXED_ROWS)
    for b in range(len(MIXED_ROWS)):
        slots = reduction.kept_slots[b][reduction.kept_mask[b]]
        # Exactly the non-visual slots survive (a visual flag on padding is not visual).
        expected = torch.nonzero(~inputs.real_visual_mask[b]).flatten()
        assert torch.equal(slots, expected)
        torch.testing.assert_close(
            reduction.hidden[b][reduction.kept_mask[b]], inputs.hidden[b, expected]
        )


def test_random_scores_depend_on_the_seed_only():
    inputs = make_layer(7, MIXED_ROWS)
    first = Random({"seed": 3}).score(inputs)
    assert first.dtype == torch.float32 and first.shape == inputs.visual_mask.shape
    assert torch.equal(first, Random({"seed": 3}).score(inputs))
    other_inputs = make_layer(8, MIXED_ROWS)  # other values, same shapes: same draw
    assert torch.equal(first, Random({"seed": 3}).score(other_inputs))
    other = Random({"seed": 4}).score(inputs)
    visual = inputs.real_visual_mask
    assert not torch.equal(first[visual], other[visual])
    assert bool(((first >= 0) & (first < 1)).all())
    # Visual scores of a row are distinct, so the seeded ranking is a permutation.
    for b in range(len(MIXED_ROWS)):
        row = first[b, visual[b]]
        assert row.unique().numel() == row.numel()


@pytest.mark.parametrize("name", ["euti", "attention"])
def test_scorers_needing_queries_and_keys_say_so(name):
    inputs = make_layer(9, MIXED_ROWS)
    bare = LayerInputs(hidden=inputs.hidden, visual_mask=inputs.visual_mask)
    with pytest.raises(ValueError, match="queries and keys"):
        SCORERS.get(name)().score(bare)
