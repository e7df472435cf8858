"""Mergers (``mean``, ``center``) on hand-made rows, against a hand computation in numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pact import MERGERS, Clustering, RowMergeInput
from pact.clusterers.dbdpc import Dbdpc

N_TOKENS, DIM, FEATURES = 22, 6, 5
MODES = ["keep", "mean", "renumber"]


def cosine_distances64(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    left = left / np.linalg.norm(left, axis=1, keepdims=True)
    right = right / np.linalg.norm(right, axis=1, keepdims=True)
    return np.clip(1.0 - left @ right.T, 0.0, None)


def ambiguous(pruned: np.ndarray, centers: np.ndarray, radius: float) -> bool:
    """True if float32 rounding could change which pruned token joins which center."""
    if not len(pruned):
        return False
    d = np.sort(cosine_distances64(pruned, centers), axis=1)
    if np.abs(d[:, 0] - radius).min() < 1e-4:
        return True  # a distance too close to the radius
    return d.shape[1] > 1 and (d[:, 1] - d[:, 0]).min() < 1e-4  # nearest center unclear


def make_row(
    seed: int,
    components: int = 1,
    mode: str = "keep",
    retrieval: bool = True,
    dropped: bool = True,
    dtype: torch.dtype = torch.float32,
) -> RowMergeInput | None:
    """A row: left padding, text, visual tokens (some pruned), text; a random clustering of
    the kept ones (centers in any order, some kept tokens dropped with label -1), and pruned
    features near some centers. None if a retrieval distance sits too close to the radius
    to be decided the same way in float32 and float64."""
    rng = np.random.default_rng(seed)
    left_pad = int(rng.integers(0, 4))
    padding = np.arange(N_TOKENS) >= left_pad
    real = np.flatnonzero(padding)
    visual = np.sort(rng.choice(real, size=int(rng.integers(3, 14)), replace=False))
    n_visual = len(visual)
    n_kept = int(rng.integers(1, n_visual + 1))
    kept = np.sort(rng.choice(n_visual, size=n_kept, replace=False))
    pruned = np.setdiff1d(np.arange(n_visual), kept)
    n_clusters = int(rng.integers(1, n_kept + 1))
    shuffled = rng.permutation(n_kept)
    centers = shuffled[:n_clusters]  # cluster c's center: kept index centers[c]
    labels = np.empty(n_kept, dtype=np.int64)
    labels[centers] = np.arange(n_clusters)
    low = -1 if dropped else 0
    labels[shuffled[n_clusters:]] = rng.integers(low, n_clusters, n_kept - n_clusters)
    kept_features = rng.standard_normal((n_kept, FEATURES))
    near = kept_features[centers[rng.integers(0, n_clusters, len(pruned))]]
    spread = rng.uniform(0.05, 1.5, (len(pruned), 1))
    pruned_features = near + spread * rng.standard_normal((len(pruned), FEATURES))
    radius = float(rng.uniform(0.05, 0.6)) if retrieval else None
    if retrieval and ambiguous(pruned_features, kept_features[centers], radius):
        return None
    if components == 1:
        positions = np.cumsum(padding)[:, None] - 1  # 0 at the first real token
    else:  # M-RoPE-like: (t, h, w) components
        positions = rng.integers(0, 30, (N_TOKENS, components))
    return RowMergeInput(
        hidden=torch.tensor(rng.standard_normal((N_TOKENS, DIM)), dtype=dtype),
        sizes=torch.tensor(rng.integers(1, 5, N_TOKENS), dtype=torch.float32),
        positions=torch.tensor(positions, dtype=torch.long),
        padding_mask=torch.tensor(padding),
        visual=torch.tensor(visual),
        kept=torch.tensor(kept),
        pruned=torch.tensor(pruned, dtype=torch.long),
        clustering=Clustering(labels=torch.tensor(labels), centers=torch.tensor(centers)),
        kept_features=torch.tensor(kept_features, dtype=torch.float32),
        pruned_features=torch.tensor(pruned_features, dtype=torch.float32).reshape(-1, FEATURES),
        retrieval_radius=radius,
        position_mode=mode,
    )


def hand_reduction(row: RowMergeInput, merger: str, weighted: bool = True):
    """What the row should become, written out token by token in float64."""
    hidden = row.hidden.double().numpy()
    sizes = row.sizes.double().numpy()
    positions = row.positions.numpy()
    visual = row.visual.tolist()
    kept_slots = [visual[i] for i in row.kept.tolist()]
    pruned_slots = [visual[i] for i in row.pruned.tolist()]
    labels, centers = row.clustering.labels.tolist(), row.clustering.centers.tolist()
    members: dict[int, list[int]] = {c: [] for c in range(len(centers))}
    for slot, label in zip(kept_slots, labels, strict=True):
        if label >= 0:
            members[label].append(slot)
    retrieved = 0
    if row.retrieval_radius is not None and pruned_slots and centers:
        d = cosine_distances64(
            row.pruned_features.double().numpy(), row.kept_features.double().numpy()[centers]
        )
        for p, slot in enumerate(pruned_slots):
            nearest = int(np.argmin(d[p]))
            if d[p, nearest] <= row.retrieval_radius:
                members[nearest].append(slot)
                retrieved += 1
    out = {}
    for slot in range(len(hidden)):
        if slot not in visual:  # text, special tokens and padding are never touched
            out[slot] = (hidden[slot], sizes[slot], positions[slot])
    for c, center in enumerate(centers):
        slot = kept_slots[center]
        group = members[c]
        weight = np.array([sizes[m] if weighted else 1.0 for m in group])
        if merger == "mean":
            state = (weight[:, None] * hidden[group]).sum(axis=0) / weight.sum()
        else:
            state = hidden[slot]
        size = sizes[group].sum()
        position = positions[slot]
        if row.position_mode == "mean":
            position = np.round((sizes[group][:, None] * positions[group]).sum(axis=0) / size)
        out[slot] = (state, size, position)
    slots = sorted(out)
    new_positions = np.array([out[s][2] for s in slots]).reshape(len(slots), -1)
    if row.position_mode == "renumber":
        real = [i for i, s in enumerate(slots) if row.padding_mask[s]]
        first = new_positions[real[0]].copy()
        for rank, i in enumerate(real):
            new_positions[i] = first + rank
    return {
        "slots": slots,
        "hidden": np.array([out[s][0] for s in slots]),
        "sizes": np.array([out[s][1] for s in slots]),
        "positions": new_positions,
        "retrieved": retrieved,
    }


def check_reduction(got, expected, row: RowMergeInput, hidden_tolerance: float = 1e-5) -> None:
    assert got.slots.tolist() == expected["slots"]
    assert bool((got.slots[1:] > got.slots[:-1]).all())  # ascending, no repeats
    assert got.hidden.dtype == row.hidden.dtype
    assert got.sizes.dtype == torch.float32
    assert got.positions.dtype == row.positions.dtype
    assert got.positions.shape == (len(expected["slots"]), row.positions.shape[1])
    np.testing.assert_allclose(
        got.hidden.double().numpy(), expected["hidden"], rtol=hidden_tolerance, atol=1e-5
    )
    np.testing.assert_allclose(got.sizes.numpy(), expected["sizes"], rtol=1e-6)
    assert got.positions.tolist() == expected["positions"].astype(np.int64).tolist()
    assert got.retrieved == expected["retrieved"]
    # Every non-visual slot survives untouched, whatever the merger.
    is_visual = torch.zeros(len(row.hidden), dtype=torch.bool)
    is_visual[row.visual] = True
    others = torch.nonzero(~is_visual).flatten()
    assert set(others.tolist()) <= set(got.slots.tolist())
    index = torch.searchsorted(got.slots, others)
    assert torch.equal(got.hidden[index], row.hidden[others])
    if row.position_mode != "renumber":
        assert torch.equal(got.positions[index], row.positions[others])


CASES = list(itertools.product(["mean", "center"], MODES, [1, 3], [True, False]))


@pytest.mark.parametrize(("merger", "mode", "components", "retrieval"), CASES)
def test_merger_matches_hand_computation(merger, mode, components, retrieval):
    checked = retrieved = 0
    for seed in range(40):
        row = make_row(seed, components=components, mode=mode, retrieval=retrieval)
        if row is None:
            continue
        expected = hand_reduction(row, merger)
        check_reduction(MERGERS.get(merger)().merge(row), expected, row)
        checked += 1
        retrieved += expected["retrieved"]
    assert checked >= 30
    assert (retrieved > 0) == retrieval


@pytest.mark.parametrize("mode", MODES)
def test_unweighted_mean_counts_every_member_once(mode):
    for seed in range(30):
        row = make_row(seed, mode=mode)
        if row is None:
            continue
        weighted = MERGERS.get("mean")().merge(row)
        unweighted = MERGERS.get("mean")({"weighted": False}).merge(row)
        check_reduction(unweighted, hand_reduction(row, "mean", weighted=False), row)
        # Sizes and positions do not depend on how hidden states are averaged.
        assert torch.equal(weighted.sizes, unweighted.sizes)
        assert torch.equal(weighted.positions, unweighted.positions)


@pytest.mark.parametrize("merger", ["mean", "center"])
def test_half_precision_hidden_states(merger):
    for seed in range(10):
        row = make_row(seed, mode="mean", dtype=torch.bfloat16)
        if row is None:
            continue
        got = MERGERS.get(merger)().merge(row)
        check_reduction(got, hand_reduction(row, merger), row, hidden_tolerance=1e-2)


def test_retrieval_takes_exactly_the_pruned_tokens_within_the_radius():
    """Unit vectors at known angles from one center: cosine distances 1 - cos(angle)."""
    angles = np.array([0.0, 0.3, 0.5, 0.8, 1.2, 2.0])  # token 0 is the (kept) center
    features = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    distances = 1.0 - np.cos(angles[1:])  # 0.045, 0.122, 0.303, 0.638, 1.416
    hidden = torch.arange(8 * 2, dtype=torch.float32).reshape(8, 2)
    for radius in [0.01, 0.1, 0.2, 0.5, 1.0, 1.9]:
        row = RowMergeInput(
            hidden=hidden,
            sizes=torch.ones(8),
            positions=torch.arange(8)[:, None],
            padding_mask=torch.ones(8, dtype=torch.bool),
            visual=torch.arange(1, 7),  # slots 1..6; slots 0 and 7 are text
            kept=torch.tensor([0]),
            pruned=torch.arange(1, 6),
            clustering=Clustering(labels=torch.tensor([0]), centers=torch.tensor([0])),
            kept_features=torch.tensor(features[:1], dtype=torch.float32),
            pruned_features=torch.tensor(features[1:], dtype=torch.float32),
            retrieval_radius=radius,
            position_mode="keep",
        )
        got = MERGERS.get("mean")().merge(row)
        taken = [slot for slot, d in zip(range(2, 7), distances, strict=True) if d <= radius]
        assert got.retrieved == len(taken)
        assert got.slots.tolist() == [0, 1, 7]
        assert got.sizes.tolist() == [1.0, 1.0 + len(taken), 1.0]
        torch.testing.assert_close(got.hidden[1], hidden[[1, *taken]].mean(dim=0))


def test_pruned_tokens_are_removed_without_retrieval_and_dropped_tokens_vanish():
    row = make_row(3, retrieval=False, dropped=True)
    got = MERGERS.get("mean")().merge(row)
    visual_slots = set(row.visual.tolist())
    kept_slots = row.visual[row.kept]
    centers = set(kept_slots[row.clustering.centers].tolist())
    # Of the visual slots, exactly the centers survive.
    assert {s for s in got.slots.tolist() if s in visual_slots} == centers
    assert got.retrieved == 0
    # A kept token labelled -1 adds nothing to any size.
    live = row.clustering.labels >= 0
    assert float(got.sizes.sum()) == pytest.approx(
        float(row.sizes.sum() - row.sizes[row.visual].sum() + row.sizes[kept_slots[live]].sum())
    )


def test_renumber_is_contiguous_from_the_first_real_token():
    row = make_row(5, mode="renumber", components=3)
    got = MERGERS.get("mean")().merge(row)
    real = row.padding_mask[got.slots]
    first_real_slot = int(got.slots[real][0])
    start = row.positions[first_real_slot]
    expected = start[None, :] + torch.arange(int(real.sum()))[:, None]
    assert torch.equal(got.positions[real], expected)
    assert torch.equal(got.positions[~real], row.positions[got.slots[~real]])


def test_row_without_visual_tokens_is_unchanged():
    nothing = torch.zeros(0, dtype=torch.long)
    row = RowMergeInput(
        hidden=torch.randn(5, 3),
        sizes=torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0]),
        positions=torch.arange(5)[:, None].repeat(1, 3),
        padding_mask=torch.ones(5, dtype=torch.bool),
        visual=nothing,
        kept=nothing,
        pruned=nothing,
        clustering=Clustering(labels=nothing, centers=nothing),
        kept_features=torch.zeros(0, 4),
        pruned_features=torch.zeros(0, 4),
        retrieval_radius=0.3,
        position_mode="mean",
    )
    for name in ("mean", "center"):
        got = MERGERS.get(name)().merge(row)
        assert got.slots.tolist() == list(range(5))
        assert torch.equal(got.hidden, row.hidden)
        assert torch.equal(got.sizes, row.sizes)
        assert torch.equal(got.positions, row.positions)


@pytest.mark.parametrize("merger", ["mean", "center"])
def test_with_a_dbdpc_clustering_and_pact_retrieval_radius(merger):
    """The PACT setting: DBDPC on the kept tokens, retrieval within 1.5 x cutoff."""
    for seed in range(10):
        row = make_row(seed, retrieval=False)
        clustering = Dbdpc({"cutoff": 0.21}).cluster(row.kept_features, torch.ones(len(row.kept)))
        row.clustering = clustering
        row.retrieval_radius = 1.5 * 0.21
        centers = row.kept_features.double().numpy()[clustering.centers.numpy()]
        if ambiguous(row.pruned_features.double().numpy(), centers, row.retrieval_radius):
            continue
        got = MERGERS.get(merger)().merge(row)
        check_reduction(got, hand_reduction(row, merger), row)
