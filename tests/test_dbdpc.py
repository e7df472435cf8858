"""DBDPC (pact.clusterers.dbdpc) against its definition, and the distance/density helpers.

The sequential reference below reuses pact's float32 distances and densities (so that the
comparison is bit-for-bit on the same numbers); those two helpers are checked separately
against a float64 numpy computation of their definitions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pact.bench.gpu.dbdpc_timing import legacy_centers, synthetic_keys
from pact.clusterers import dbdpc as dbdpc_module
from pact.clusterers.common import density_order, gaussian_density
from pact.clusterers.dbdpc import Dbdpc, dbdpc_centers, denser_neighbours
from pact.distance import cosine_distances, cross_cosine_distances

CUTOFFS = [0.0, 0.02, 0.1, 0.21, 0.4, 0.8, 1.2]
DCS = [0.1, 0.5, 2.0]


def make_features(seed: int, n: int, dim: int, kind: str) -> torch.Tensor:
    """``random``: Gaussian rows. ``clustered``: a few directions, small noise, duplicates."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        x = rng.standard_normal((n, dim))
    else:
        directions = rng.standard_normal((int(rng.integers(1, 5)), dim))
        pick = rng.integers(0, len(directions), n)
        scale = rng.uniform(0.5, 2.0, (n, 1))
        x = directions[pick] * scale + 0.05 * rng.standard_normal((n, dim))
        for i in range(1, n):
            if rng.random() < 0.3:  # exact duplicate of an earlier token
                x[i] = x[rng.integers(0, i)]
    return torch.tensor(x, dtype=torch.float32)


def numpy_cosine_distances(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``1 - cos`` in float64, clamped at 0; an all-zero row counts as the zero direction."""

    def unit(x):
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)

    return np.clip(1.0 - unit(left) @ unit(right).T, 0.0, None)


def sequential_dbdpc(features: torch.Tensor, cutoff: float, dc: float):
    """The definition: visit tokens by decreasing density (ties: lower index); a token is a
    center if farther than ``cutoff`` from every center so far; each token joins its nearest
    center (ties: lowest center index)."""
    distances = cosine_distances(features)
    density = gaussian_density(distances, dc).tolist()
    n = len(density)
    visit = sorted(range(n), key=lambda i: (-density[i], i))
    centers: list[int] = []
    for token in visit:
        if not centers or bool((distances[token, centers] > cutoff).all()):
            centers.append(token)
    centers.sort()
    labels = []
    for token in range(n):
        row = distances[token].tolist()
        nearest = min(range(len(centers)), key=lambda c: (row[centers[c]], c))
        labels.append(nearest)
    return labels, centers


def check_guarantees(features: torch.Tensor, labels, centers, cutoff: float) -> None:
    n = features.shape[0]
    labels, centers = torch.as_tensor(labels), torch.as_tensor(centers)
    assert labels.shape == (n,) and labels.dtype == torch.long
    assert centers.numel() >= 1
    assert torch.equal(centers, torch.sort(centers).values)
    assert torch.equal(labels[centers], torch.arange(centers.numel()))
    assert int(labels.min()) >= 0 and int(labels.max()) < centers.numel()
    # On the float32 distances DBDPC uses, the bounds hold exactly...
    distances = cosine_distances(features)
    between = distances[centers][:, centers]
    off_diagonal = ~torch.eye(centers.numel(), dtype=torch.bool)
    assert bool((between[off_diagonal] > cutoff).all())
    assert bool((distances[torch.arange(n), centers[labels]] <= cutoff).all())
    # ...and on independent float64 distances, up to float32 rounding.
    exact = numpy_cosine_distances(features.double().numpy(), features.double().numpy())
    np.fill_diagonal(exact, 0.0)
    c = centers.numpy()
    assert (exact[np.ix_(c, c)][off_diagonal.numpy()] > cutoff - 1e-5).all()
    assert (exact[np.arange(n), c[labels.numpy()]] <= cutoff + 1e-5).all()


feature_cases = dict(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 48),
    dim=st.integers(2, 12),
    kind=st.sampled_from(["random", "clustered"]),
    cutoff=st.sampled_from(CUTOFFS),
    dc=st.sampled_from(DCS),
)


@settings(max_examples=150, deadline=None)
@given(**feature_cases)
def test_dbdpc_guarantees(seed, n, dim, kind, cutoff, dc):
    features = make_features(seed, n, dim, kind)
    result = Dbdpc({"cutoff": cutoff, "dc": dc}).cluster(features, torch.ones(n))
    check_guarantees(features, result.labels, result.centers, cutoff)


@settings(max_examples=200, deadline=None)
@given(**feature_cases)
def test_batched_form_equals_sequential_definition(seed, n, dim, kind, cutoff, dc):
    features = make_features(seed, n, dim, kind)
    labels, centers = sequential_dbdpc(features, cutoff, dc)
    result = Dbdpc({"cutoff": cutoff, "dc": dc}).cluster(features, torch.ones(n))
    assert result.centers.tolist() == centers
    assert result.labels.tolist() == labels
    check_guarantees(features, labels, centers, cutoff)


@pytest.mark.parametrize("seed", range(3))
def test_batched_form_on_a_large_clustered_row(seed):
    """Several hundred tokens: many batched rounds, still the sequential centers."""
    features = make_features(seed, 400, 16, "clustered")
    features += 0.3 * torch.randn(400, 16, generator=torch.Generator().manual_seed(seed))
    labels, centers = sequential_dbdpc(features, 0.21, 2.0)
    result = Dbdpc().cluster(features, torch.ones(400))
    assert len(centers) > 10
    assert result.centers.tolist() == centers
    assert result.labels.tolist() == labels


def test_dbdpc_centers_takes_any_order():
    """``dbdpc_centers`` follows the order it is given, not a density it recomputes."""
    features = make_features(7, 30, 6, "random")
    distances = cosine_distances(features)
    for seed in range(5):
        order = torch.randperm(30, generator=torch.Generator().manual_seed(seed))
        centers = []
        for token in order.tolist():
            if not centers or bool((distances[token, centers] > 0.3).all()):
                centers.append(token)
        assert dbdpc_centers(distances, order, 0.3).tolist() == sorted(centers)


def test_cutoff_zero_makes_every_distinct_token_a_cluster():
    features = make_features(3, 40, 8, "random")
    result = Dbdpc({"cutoff": 0.0}).cluster(features, torch.ones(40))
    assert result.centers.tolist() == list(range(40))
    assert result.labels.tolist() == list(range(40))


@pytest.mark.parametrize("cutoff", [0.0, 0.21, 1.0])
def test_identical_and_parallel_tokens_form_one_cluster(cutoff):
    row = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))
    identical = row.repeat(25, 1)
    if cutoff > 0:
        result = Dbdpc({"cutoff": cutoff}).cluster(identical, torch.ones(25))
        # Equal densities: the first token leads (ties broken by position).
        assert result.centers.tolist() == [0]
        assert result.labels.tolist() == [0] * 25
    scales = torch.tensor([[1.0], [2.0], [0.5], [4.0]])
    result = Dbdpc({"cutoff": max(cutoff, 1e-5)}).cluster(row * scales, torch.ones(4))
    assert result.centers.numel() == 1
    assert result.labels.tolist() == [0] * 4


def test_empty_and_single_token():
    empty = Dbdpc().cluster(torch.zeros(0, 4), torch.ones(0))
    assert empty.labels.numel() == 0 and empty.centers.numel() == 0
    single = Dbdpc().cluster(torch.randn(1, 4), torch.ones(1))
    assert single.labels.tolist() == [0] and single.centers.tolist() == [0]


def test_opposite_directions_stay_apart_below_distance_two():
    """cos = -1 is distance 2, the largest there is: two clusters for any cutoff below it."""
    row = torch.randn(1, 5, generator=torch.Generator().manual_seed(1))
    pair = torch.cat([row, -row, 2.0 * row])
    result = Dbdpc({"cutoff": 1.99}).cluster(pair, torch.ones(3))
    assert result.centers.numel() == 2
    assert result.labels[0] == result.labels[2] != result.labels[1]


# --- the masked form against the legacy compacting form and the definition -------------


def sequential_centers(distances: torch.Tensor, order: torch.Tensor, cutoff: float) -> list[int]:
    """The definition on given distances and order (no density recomputed)."""
    centers: list[int] = []
    for token in order.tolist():
        if not centers or bool((distances[token, centers] > cutoff).all()):
            centers.append(token)
    return sorted(centers)


@settings(max_examples=300, deadline=None)
@given(**feature_cases, check_every=st.sampled_from([1, 2, 3, 4, 16]))
def test_masked_form_equals_legacy_form_and_definition(seed, n, dim, kind, cutoff, dc, check_every):
    """The masked rounds (any check interval) pick the legacy form's and the definition's
    centers, on the same float32 distances and density order."""
    features = make_features(seed, n, dim, kind)
    distances = cosine_distances(features)
    order = density_order(gaussian_density(distances, dc))
    masked = dbdpc_centers(distances, order, cutoff, check_every)
    assert masked.tolist() == legacy_centers(distances, order, cutoff).tolist()
    assert masked.tolist() == sequential_centers(distances, order, cutoff)


@pytest.mark.parametrize("check_every", [1, 4, 16])
@pytest.mark.parametrize(("n", "kind"), [(700, "smooth"), (1500, "smooth"), (500, "random")])
def test_masked_form_on_image_like_keys(n, kind, check_every):
    """bf16 image-like keys: tens of centers over 10+ rounds, the legacy form's centers."""
    features = synthetic_keys(n, 64, kind, "cpu", seed=n).float()
    distances = cosine_distances(features)
    order = density_order(gaussian_density(distances, 2.0))
    expected = legacy_centers(distances, order, 0.21)
    assert torch.equal(dbdpc_centers(distances, order, 0.21, check_every), expected)
    if kind == "smooth":
        assert 10 < expected.numel() < n // 4  # many rounds, not one
    assert sequential_centers(distances, order, 0.21) == expected.tolist()


def test_neighbour_matrix_is_the_same_in_any_block_size(monkeypatch):
    features = make_features(5, 90, 6, "clustered")
    distances = cosine_distances(features)
    order = density_order(gaussian_density(distances, 2.0))
    rank = torch.empty_like(order)
    rank[order] = torch.arange(90)
    expected = ((distances <= 0.3) & (rank[None, :] < rank[:, None])).to(torch.float16)
    for elements in (1, 90 * 7, 10**9):  # one row, 7 rows (uneven last block), all at once
        monkeypatch.setitem(dbdpc_module._BLOCK_ELEMENTS, "cpu", elements)
        assert torch.equal(denser_neighbours(distances, rank, 0.3), expected)


def test_check_every_must_be_positive():
    distances = cosine_distances(make_features(1, 5, 3, "random"))
    with pytest.raises(ValueError, match="check_every"):
        dbdpc_centers(distances, torch.arange(5), 0.2, check_every=0)


# --- the helpers the reference above relies on -------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 30),
    dim=st.integers(1, 12),
    kind=st.sampled_from(["random", "clustered"]),
)
def test_cosine_distances_match_numpy(seed, n, dim, kind):
    features = make_features(seed, n, dim, kind)
    features[0] = 0.0 if n > 3 else features[0]  # an all-zero row: distance 1 to everyone
    got = cosine_distances(features)
    assert got.dtype == torch.float32
    assert torch.equal(got, got.T)
    assert torch.equal(torch.diagonal(got), torch.zeros(n))
    expected = numpy_cosine_distances(features.double().numpy(), features.double().numpy())
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-6, rtol=0)


def test_zero_row_is_distance_one_from_everything():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    got = cosine_distances(features)
    assert got[0].tolist() == [0.0, 1.0, 1.0]
    assert got[1, 2].item() == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 20), m=st.integers(1, 20))
def test_cross_cosine_distances_match_numpy(seed, n, m):
    generator = torch.Generator().manual_seed(seed)
    left, right = torch.randn(n, 6, generator=generator), torch.randn(m, 6, generator=generator)
    right[0] = left[-1] * 3.0  # parallel: distance 0
    got = cross_cosine_distances(left, right)
    expected = numpy_cosine_distances(left.double().numpy(), right.double().numpy())
    assert got.shape == (n, m) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-6, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 30),
    dc=st.sampled_from([0.05, 0.3, 1.0, 2.0, 5.0]),
)
def test_gaussian_density_matches_numpy(seed, n, dc):
    distances = cosine_distances(make_features(seed, n, 5, "clustered"))
    got = gaussian_density(distances, dc)
    d = distances.double().numpy()
    expected = np.array([sum(np.exp(-((d[i, j] / dc) ** 2)) for j in range(n)) for i in range(n)])
    assert got.shape == (n,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=0)
