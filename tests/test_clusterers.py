"""Clusterers: invariants every registered one must keep, then each built-in against an
independent computation (scikit-learn, numpy, or a plain implementation of its definition)."""

from __future__ import annotations

import math
from collections import defaultdict
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import DBSCAN, AgglomerativeClustering

from pact import CLUSTERERS, Clustering
from pact.clusterers.common import gaussian_density
from pact.clusterers.dpc import Dpc
from pact.clusterers.kmeans import Kmeans
from pact.clusterers.none import NoClustering
from pact.clusterers.sklearn import Agglomerative, Dbscan
from pact.clusterers.tome import Tome
from pact.distance import cosine_distances, normalize

# Settings for clusterers whose config has a required choice; any other name (a plugin
# included) is built with its default config.
TEST_CONFIGS = {
    "tome": {"r": 3},
    "agglomerative": {"keep_ratio": 0.5},
}


def build(name: str, **settings_):
    return CLUSTERERS.get(name)({**TEST_CONFIGS.get(name, {}), **settings_})


def make_features(seed: int, n: int, dim: int = 8, kind: str = "random") -> torch.Tensor:
    """``random`` Gaussian rows; ``clustered``: a few directions plus noise and exact
    duplicates; ``bfloat16``: Gaussian rows rounded through bfloat16 (many near-ties)."""
    rng = np.random.default_rng(seed)
    if kind == "clustered":
        directions = rng.standard_normal((int(rng.integers(1, 5)), dim))
        x = directions[rng.integers(0, len(directions), n)] * rng.uniform(0.5, 2.0, (n, 1))
        x += 0.05 * rng.standard_normal((n, dim))
        for i in range(1, n):
            if rng.random() < 0.3:
                x[i] = x[rng.integers(0, i)]
        return torch.tensor(x, dtype=torch.float32)
    features = torch.tensor(rng.standard_normal((n, dim)), dtype=torch.float32)
    if kind == "bfloat16":
        features = features.to(torch.bfloat16).float()
    return features


def unit64(features: torch.Tensor) -> np.ndarray:
    x = features.double().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def distances64(features: torch.Tensor) -> np.ndarray:
    unit = unit64(features)
    d = np.clip(1.0 - unit @ unit.T, 0.0, None)
    np.fill_diagonal(d, 0.0)
    return d


def partition(labels) -> set[frozenset[int]]:
    """The grouping ``labels`` describe, whatever the cluster numbers (-1 left out)."""
    groups: dict[int, set[int]] = defaultdict(set)
    for token, label in enumerate(np.asarray(labels).tolist()):
        if label >= 0:
            groups[label].add(token)
    return {frozenset(group) for group in groups.values()}


def check_clustering(result: Clustering, n: int) -> None:
    labels, centers = result.labels, result.centers
    assert labels.dim() == 1 and labels.shape == (n,) and labels.dtype == torch.long
    assert centers.dim() == 1 and centers.dtype == torch.long
    n_clusters = centers.numel()
    assert n_clusters <= n
    assert centers.unique().numel() == n_clusters
    if n:
        assert int(labels.min()) >= -1 and int(labels.max()) < n_clusters
        assert n_clusters >= 1 or bool((labels == -1).all())
    # Each center is a member of its own cluster (so no cluster is empty).
    assert torch.equal(labels[centers], torch.arange(n_clusters))
    result.check()


def check_medoids(result: Clustering, features: torch.Tensor) -> None:
    """Each center has the least summed distance to its cluster's members (float64)."""
    d = distances64(features)
    labels = result.labels.numpy()
    for c, center in enumerate(result.centers.tolist()):
        members = np.flatnonzero(labels == c)
        spread = d[np.ix_(members, members)].sum(axis=1)
        assert d[center, members].sum() <= spread.min() + 1e-5


def exact_ceil(ratio: float, n: int) -> int:
    return math.ceil(Fraction(str(ratio)) * n)


# --- every registered clusterer ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "clustered", "bfloat16"])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 33])
@pytest.mark.parametrize("name", CLUSTERERS.names())
def test_every_clusterer_returns_a_well_formed_clustering(name, n, kind):
    clusterer = build(name)
    features = make_features(n + 11, n, kind=kind)
    sizes = torch.randint(1, 4, (n,), generator=torch.Generator().manual_seed(n)).float()
    before = features.clone(), sizes.clone()
    result = clusterer.cluster(features, sizes)
    check_clustering(result, n)
    if n == 1:  # one token: one cluster of itself, or dropped
        assert result.labels.tolist() in ([0], [-1])
    assert torch.equal(features, before[0]) and torch.equal(sizes, before[1])
    again = clusterer.cluster(features, sizes)
    assert torch.equal(again.labels, result.labels)
    assert torch.equal(again.centers, result.centers)


@pytest.mark.parametrize(
    "name", [name for name in CLUSTERERS.names() if not CLUSTERERS.get(name).needs_features]
)
def test_clusterers_that_ignore_features_accept_zero_width_ones(name):
    """The pipeline skips making features when ``needs_features`` is False."""
    check_clustering(build(name).cluster(torch.zeros(6, 0), torch.ones(6)), 6)


# --- DBSCAN ------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_as_clusters", [True, False])
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    eps=st.sampled_from([0.02, 0.1, 0.3]),
    min_samples=st.sampled_from([1, 2, 3, 5]),
    kind=st.sampled_from(["random", "clustered"]),
)
def test_dbscan_matches_scikit_learn(noise_as_clusters, seed, n, eps, min_samples, kind):
    features = make_features(seed, n, dim=4, kind=kind)
    config = {"eps": eps, "min_samples": min_samples, "noise_as_clusters": noise_as_clusters}
    result = Dbscan(config).cluster(features, torch.ones(n))
    check_clustering(result, n)
    reference = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(
        cosine_distances(features).double().numpy()
    )
    noise = np.flatnonzero(reference < 0)
    expected = partition(reference)
    if noise_as_clusters:
        expected |= {frozenset([int(i)]) for i in noise}
        assert bool((result.labels >= 0).all())
    else:
        assert np.array_equal(result.labels.numpy() < 0, reference < 0)
    assert partition(result.labels) == expected
    check_medoids(result, features)


def test_dbscan_noise_both_ways_on_a_hand_made_row():
    base = torch.eye(4)
    # Tokens 0, 1, 2 nearly parallel; 3 and 4 orthogonal to everything else.
    features = torch.stack([base[0], base[0] + 0.01 * base[1], base[0] - 0.01 * base[2]])
    features = torch.cat([features, base[1:3]])
    kept = Dbscan({"eps": 0.1, "min_samples": 2}).cluster(features, torch.ones(5))
    assert partition(kept.labels) == {frozenset({0, 1, 2}), frozenset({3}), frozenset({4})}
    dropped = Dbscan({"eps": 0.1, "min_samples": 2, "noise_as_clusters": False})
    result = dropped.cluster(features, torch.ones(5))
    assert result.labels.tolist() == [0, 0, 0, -1, -1]
    assert result.centers.tolist() == [0]  # the medoid of three nearly parallel tokens


# --- agglomerative -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rule", ["keep_ratio", "distance_threshold"])
@pytest.mark.parametrize("linkage", ["single", "complete", "average", "ward"])
def test_agglomerative_matches_scikit_learn(linkage, rule, seed):
    n = 30
    features = make_features(seed, n, dim=6, kind="clustered" if seed % 2 else "random")
    features += 0.01 * torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))
    if rule == "keep_ratio":
        config, n_clusters, threshold = {"keep_ratio": 0.3}, exact_ceil(0.3, n), None
    else:
        threshold = 0.6 if linkage == "ward" else 0.2
        config, n_clusters = {"distance_threshold": threshold}, None
    result = Agglomerative({"linkage": linkage, **config}).cluster(features, torch.ones(n))
    check_clustering(result, n)
    if linkage == "ward":  # Euclidean on the unit vectors
        data, metric = normalize(features).double().numpy(), "euclidean"
    else:
        data, metric = cosine_distances(features).double().numpy(), "precomputed"
    reference = AgglomerativeClustering(
        n_clusters=n_clusters, distance_threshold=threshold, metric=metric, linkage=linkage
    ).fit_predict(data)
    assert partition(result.labels) == partition(reference)
    assert bool((result.labels >= 0).all())
    if n_clusters is not None:
        assert result.centers.numel() == n_clusters
    check_medoids(result, features)


@pytest.mark.parametrize(("ratio", "n"), [(0.55, 100), (0.07, 100), (0.3, 10), (1.0, 9)])
def test_ratio_clusterers_make_ceil_of_ratio_times_n_clusters(ratio, n):
    """``ceil(keep_ratio * n)`` taken exactly, not after float rounding of the product."""
    features = make_features(n, n, dim=16)
    expected = exact_ceil(ratio, n)
    agglomerative = Agglomerative({"keep_ratio": ratio}).cluster(features, torch.ones(n))
    assert agglomerative.centers.numel() == expected
    dpc = Dpc({"keep_ratio": ratio}).cluster(features, torch.ones(n))
    assert dpc.centers.numel() == expected
    kmeans = Kmeans({"keep_ratio": ratio}).cluster(features, torch.ones(n))
    assert 1 <= kmeans.centers.numel() <= expected


def test_agglomerative_single_token():
    result = Agglomerative({"keep_ratio": 0.5}).cluster(torch.randn(1, 3), torch.ones(1))
    assert result.labels.tolist() == [0] and result.centers.tolist() == [0]


# --- k-means -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_kmeans_representative_is_nearest_to_its_clusters_mean_direction(seed):
    """faiss spherical k-means at convergence: each centroid is the normalised mean of its
    unit members, every token is closest to its own centroid, and the representative is the
    member closest to the centroid. Recomputed here from the returned grouping alone."""
    n, ratio = 40, [0.1, 0.2, 0.35][seed % 3]
    features = make_features(seed, n, dim=8, kind="clustered")
    features += 0.2 * torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
    result = Kmeans({"keep_ratio": ratio, "iterations": 100}).cluster(features, torch.ones(n))
    check_clustering(result, n)
    assert bool((result.labels >= 0).all())  # k-means drops nobody
    assert 1 <= result.centers.numel() <= exact_ceil(ratio, n)
    unit, labels = unit64(features), result.labels.numpy()
    means = np.stack([unit[labels == c].sum(axis=0) for c in range(result.centers.numel())])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    similarity = unit @ means.T
    own = similarity[np.arange(n), labels]
    assert (own >= similarity.max(axis=1) - 1e-5).all()
    for c, center in enumerate(result.centers.tolist()):
        members = np.flatnonzero(labels == c)
        assert similarity[center, c] >= similarity[members, c].max() - 1e-5


def test_kmeans_finds_well_separated_groups():
    directions = torch.eye(6)[:3] * torch.tensor([[1.0], [2.0], [3.0]])
    which = torch.arange(30) % 3
    noise = 0.01 * torch.randn(30, 6, generator=torch.Generator().manual_seed(0))
    features = directions[which] + noise
    result = Kmeans({"keep_ratio": 0.1}).cluster(features, torch.ones(30))
    assert partition(result.labels) == partition(which.numpy())


# --- ToMe --------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    r=st.integers(0, 25),
    kind=st.sampled_from(["random", "clustered"]),
)
def test_tome_merges_the_r_most_similar_a_to_b_edges(seed, n, r, kind):
    features = make_features(seed, n, dim=6, kind=kind)
    result = Tome({"r": r}).cluster(features, torch.ones(n))
    check_clustering(result, n)
    side_a, side_b = np.arange(0, n, 2), np.arange(1, n, 2)
    merged_count = min(r, len(side_a)) if len(side_b) else 0
    assert result.centers.numel() == n - merged_count
    roots = result.centers[result.labels].numpy()
    merged = np.flatnonzero(roots != np.arange(n))
    assert len(merged) == merged_count
    assert (merged % 2 == 0).all() and (roots[merged] % 2 == 1).all()  # A -> B only
    if not len(side_b):
        return
    unit = unit64(features)
    similarity = unit[side_a] @ unit[side_b].T
    best = similarity.max(axis=1)
    # Each merged A token goes to its most similar B token (up to float32 rounding)...
    a_row = merged // 2
    partner = similarity[a_row, roots[merged] // 2]
    assert (partner >= best[a_row] - 1e-6).all()
    # ...and the merged A tokens are those with the highest best similarity.
    unmerged = np.setdiff1d(np.arange(len(side_a)), a_row)
    if len(a_row) and len(unmerged):
        assert best[a_row].min() >= best[unmerged].max() - 1e-6


def test_tome_breaks_ties_by_position():
    """All similarities exactly 1: the first r A tokens merge, each into the first B token."""
    features = torch.zeros(9, 4)
    features[:, 0] = torch.arange(1, 10).float()  # parallel, exactly representable
    result = Tome({"r": 3}).cluster(features, torch.ones(9))
    roots = result.centers[result.labels].tolist()
    assert roots == [1, 1, 1, 3, 1, 5, 6, 7, 8]


@pytest.mark.parametrize(("ratio", "n"), [(0.29, 100), (0.5, 7), (0.1, 30), (0.0, 10)])
def test_tome_merge_ratio_is_floor_of_ratio_times_n(ratio, n):
    features = make_features(n, n, dim=6)
    result = Tome({"merge_ratio": ratio}).cluster(features, torch.ones(n))
    assert result.centers.numel() == n - math.floor(Fraction(str(ratio)) * n)


# --- DPC ---------------------------------------------------------------------------------


def rodriguez_laio(features: torch.Tensor, keep_ratio: float, dc: float) -> list[int]:
    """Classic density peaks, written out: returns each token's root (its cluster center).

    Same density and tie rules as pact: densities from pact's float32 distances; denser
    means earlier in (density descending, index ascending); a nearest denser neighbour tie
    goes to the denser one; gamma ties to the lower index; the densest token always leads.
    """
    distances = cosine_distances(features)
    density = gaussian_density(distances, dc).numpy()
    d = distances.numpy()
    n = len(density)
    order = sorted(range(n), key=lambda i: (-density[i], i))
    delta = np.zeros(n, dtype=np.float32)
    parent = list(range(n))
    for rank, token in enumerate(order):
        if rank == 0:
            delta[token] = d[token].max()
            continue
        denser = order[:rank]
        parent[token] = min(denser, key=lambda j: (d[token, j], denser.index(j)))
        delta[token] = d[token, parent[token]]
    gamma = density.astype(np.float32) * delta
    gamma[order[0]] = np.inf
    n_centers = min(n, math.ceil(Fraction(str(keep_ratio)) * n))
    centers = sorted(range(n), key=lambda i: (-gamma[i], i))[:n_centers]
    root = {}
    for token in order:  # denser tokens are resolved first
        root[token] = token if token in centers else root[parent[token]]
    return [root[i] for i in range(n)]


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    keep_ratio=st.sampled_from([0.05, 0.2, 0.5, 1.0]),
    dc=st.sampled_from([0.05, 0.2, 1.0]),
    kind=st.sampled_from(["random", "clustered"]),
)
def test_dpc_matches_rodriguez_laio(seed, n, keep_ratio, dc, kind):
    features = make_features(seed, n, dim=5, kind=kind)
    result = Dpc({"keep_ratio": keep_ratio, "dc": dc}).cluster(features, torch.ones(n))
    check_clustering(result, n)
    roots = rodriguez_laio(features, keep_ratio, dc)
    assert result.centers[result.labels].tolist() == roots
    assert result.centers.tolist() == sorted(set(roots))


def test_dpc_default_bandwidth_is_the_two_percent_distance_quantile():
    features = make_features(5, 30, dim=5)
    distances = cosine_distances(features)
    off_diagonal = distances.double().numpy()[~np.eye(30, dtype=bool)]
    expected = np.quantile(off_diagonal, 0.02)
    assert Dpc().bandwidth(distances) == pytest.approx(expected, rel=1e-5)
    assert Dpc({"dc": 0.7}).bandwidth(distances) == 0.7
    assert Dpc().bandwidth(cosine_distances(features[:1])) == 1.0


# --- none --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7])
def test_none_is_the_identity(n):
    result = NoClustering().cluster(torch.randn(n, 3), torch.ones(n))
    assert result.labels.tolist() == list(range(n))
    assert result.centers.tolist() == list(range(n))


@pytest.mark.parametrize("size", [7, 1000, 2**24 + 5])
def test_linear_quantile_matches_numpy_beyond_torch_limits(size):
    """torch.quantile refuses > 2**24 values (n = 5000 tokens has 25M distances)."""
    from pact.clusterers.dpc import linear_quantile

    values = torch.rand(size, generator=torch.Generator().manual_seed(size))
    for q in (0.0, 0.02, 0.5, 1.0):
        expected = np.quantile(values.double().numpy(), q)
        assert linear_quantile(values, q) == pytest.approx(expected, abs=1e-6)
