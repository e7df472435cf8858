"""One layer's tensors in, a :class:`Reduction` out: scorer -> clusterer -> merger.

No model code here: the hook (or a user) gives hidden states, the visual-token mask,
positions, sizes and the layer's queries/keys; the pipeline decides what survives.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pact.config import PactConfig, StageConfig
from pact.lazy import lazy_module
from pact.mergers.base import RowMergeInput
from pact.registry import CLUSTERERS, MERGERS, SCORERS
from pact.tensors import (
    Budget,
    Clustering,
    LayerInputs,
    Reduction,
    ReductionStats,
    RowReduction,
    StepTimes,
)

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


def select_kept(scores: Tensor, n_keep: int) -> tuple[Tensor, Tensor]:
    """Indices (ascending) of the ``n_keep`` highest scores and of the rest.

    Ties go to the lower index (the earlier position).
    """
    ranking = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(ranking[:n_keep]).values, torch.sort(ranking[n_keep:]).values


@contextmanager
def _timed(times: StepTimes, step: str, device: torch.device):
    """Add the seconds the block takes to ``times.<step>``; waits for CUDA work to finish."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        setattr(times, step, getattr(times, step) + time.perf_counter() - start)


def _check_finite(inputs: LayerInputs) -> None:
    assert inputs.padding_mask is not None
    if not bool(torch.isfinite(inputs.hidden[inputs.padding_mask]).all()):
        raise ValueError(
            "hidden states contain NaN or inf at real (non-padding) tokens; pact cannot rank "
            "or cluster them (check the model's dtype and inputs)"
        )


@dataclass
class _RowPlan:
    visual: Tensor
    kept: Tensor
    pruned: Tensor
    recycled: Tensor
    """Indices into ``visual`` of the pruned tokens recycled (a subset of ``pruned``)."""


def recycled_count(pruned: int, fraction: float) -> int:
    """``floor(fraction x pruned) + 1`` tokens, at most all (SparseVLM's count)."""
    return min(pruned, int(fraction * pruned) + 1) if pruned else 0


def join_clusterings(
    kept: Tensor, kept_clustering: Clustering, recycled: Tensor, recycled_clustering: Clustering
) -> tuple[Tensor, Clustering]:
    """The kept and the recycled tokens (indices into a row's visual tokens) as one ascending
    set, with one clustering over it: the recycled clusters numbered after the kept ones."""
    union, order = torch.sort(torch.cat([kept, recycled]))
    shift = kept_clustering.centers.numel()
    recycled_labels = torch.where(
        recycled_clustering.labels >= 0, recycled_clustering.labels + shift, -1
    )
    labels = torch.cat([kept_clustering.labels, recycled_labels])[order]
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=order.device)
    centers = torch.cat(
        [position[kept_clustering.centers], position[kept.numel() + recycled_clustering.centers]]
    )
    return union, Clustering(labels, centers)


class Pipeline:
    """A built reduction stage: components instantiated once, then called per forward."""

    def __init__(self, stage: StageConfig):
        self.stage = stage
        self.scorer = None if stage.scorer is None else SCORERS.get(stage.scorer.name)(stage.scorer)
        self.clusterer = CLUSTERERS.get(stage.clusterer.name)(stage.clusterer)
        self.merger = MERGERS.get(stage.merger.name)(stage.merger)
        recycling = stage.recycling
        self.recycler = (
            None
            if recycling is None
            else CLUSTERERS.get(recycling.clusterer.name)(recycling.clusterer)
        )

    @property
    def needs_attention_scores(self) -> bool:
        return self.scorer is not None and self.scorer.needs_attention_scores

    def __call__(self, inputs: LayerInputs) -> Reduction:
        _check_finite(inputs)
        times = StepTimes()
        device = inputs.hidden.device
        with _timed(times, "score", device):
            plans = self._plan_rows(inputs)
        features = self._features(inputs)
        rows: list[RowReduction] = []
        stats = ReductionStats([], [], [], [])
        for row_index, plan in enumerate(plans):
            rows.append(self._reduce_row(inputs, row_index, plan, features, times))
            stats.visual_in.append(plan.visual.numel())
            stats.after_prune.append(plan.kept.numel())
            stats.retrieved.append(rows[-1].retrieved)
        # Real visual tokens only: a visual_mask left True at padding must not count.
        stats.after_merge = [
            int(inputs.real_visual_mask[b, row.slots].sum()) for b, row in enumerate(rows)
        ]
        stats.seconds = times
        stats.layer = self.stage.layer
        stats.tokens_in = inputs.padding_mask.sum(dim=1).tolist()
        stats.tokens_out = [
            int(inputs.padding_mask[b, row.slots].sum()) for b, row in enumerate(rows)
        ]
        return stack_rows(inputs, rows, stats)

    def budget(self, inputs: LayerInputs) -> Budget:
        """Visual tokens kept per image (``keep_tokens``) or per row (``keep_ratio``); with
        neither (a scorer that sets its own count), every visual token of each row."""
        visual_mask = inputs.real_visual_mask
        if self.stage.keep_tokens is not None:
            return Budget.per_image(visual_mask, self.stage.keep_tokens)
        ratio = 1.0 if self.stage.keep_ratio is None else self.stage.keep_ratio
        return Budget.whole_rows(visual_mask, ratio)

    def _scored_budget(self, inputs: LayerInputs) -> tuple[Budget, Tensor]:
        """The scorer's budget (:meth:`Scorer.budget_for`), checked: each count of a group
        within ``[0, group size]``; and its scores."""
        assert self.scorer is not None
        asked = self.budget(inputs)
        budget, scores = self.scorer.budget_and_scores(inputs, asked)
        for row in range(inputs.batch_size):
            sizes = [slots.numel() for slots in budget.members(row)]
            counts = budget.counts[row]
            if len(counts) != len(asked.counts[row]) or any(
                not 0 <= count <= size for count, size in zip(counts, sizes, strict=True)
            ):
                raise ValueError(
                    f"scorer {self.stage.scorer.name!r} returned keep counts {counts} for groups "
                    f"of {sizes} visual tokens in row {row}; each must lie in [0, group size]"
                )
        return budget, scores

    def _plan_rows(self, inputs: LayerInputs) -> list[_RowPlan]:
        visual_mask = inputs.real_visual_mask
        scores = budget = None
        if self.scorer is not None and bool(visual_mask.any()):
            budget, scores = self._scored_budget(inputs)
            if not bool(torch.isfinite(scores[visual_mask]).all()):
                raise ValueError(f"scorer {self.stage.scorer.name!r} returned NaN or inf scores")
        plans = []
        for row in range(inputs.batch_size):
            visual = torch.nonzero(visual_mask[row]).flatten()
            everything = torch.arange(visual.numel(), device=visual.device)
            if scores is None:
                plans.append(_RowPlan(visual, everything, everything[:0], everything[:0]))
                continue
            kept = []
            for slots, count in zip(budget.members(row), budget.counts[row], strict=True):
                best, _ = select_kept(scores[row, slots].float(), count)
                kept.append(slots[best])
            keep = torch.zeros(inputs.hidden.shape[1], dtype=torch.bool, device=visual.device)
            if kept:
                keep[torch.cat(kept)] = True
            keep = keep[visual]
            pruned = everything[~keep]
            plans.append(_RowPlan(visual, everything[keep], pruned, pruned[:0]))
            if self.stage.recycling is not None:
                count = recycled_count(pruned.numel(), self.stage.recycling.fraction)
                best, _ = select_kept(scores[row, visual[pruned]].float(), count)
                plans[-1].recycled = pruned[best]
        return plans

    def _features(self, inputs: LayerInputs) -> Tensor | None:
        """``[B, N, F]`` float32 vectors that distances are measured on, if anything needs them."""
        needs = self.clusterer.needs_features or self.stage.retrieval
        needs = needs or (self.recycler is not None and self.recycler.needs_features)
        if not needs or not bool(inputs.real_visual_mask.any()):
            return None
        if self.stage.cluster_on == "hidden":
            return inputs.hidden.float()
        if inputs.qk is None:
            raise ValueError(
                f"cluster_on={self.stage.cluster_on!r} needs the layer's keys (inputs.qk)"
            )
        keys = inputs.qk.keys(rotary=self.stage.cluster_on == "keys_rope")
        if self.stage.cluster_on == "keys_mean":
            return keys.float().mean(dim=1)
        batch, heads, tokens, head_dim = keys.shape
        return keys.float().permute(0, 2, 1, 3).reshape(batch, tokens, heads * head_dim)

    def _reduce_row(
        self, inputs: LayerInputs, b: int, plan: _RowPlan, features: Tensor | None, times: StepTimes
    ) -> RowReduction:
        assert inputs.sizes is not None and inputs.positions is not None
        kept_slots, pruned_slots = plan.visual[plan.kept], plan.visual[plan.pruned]
        device = inputs.hidden.device
        if features is None:
            kept_features = torch.zeros(kept_slots.numel(), 0, device=device)
            pruned_features = torch.zeros(pruned_slots.numel(), 0, device=device)
        else:
            kept_features, pruned_features = features[b, kept_slots], features[b, pruned_slots]
        with _timed(times, "cluster", device):
            clustering = self.clusterer.cluster(kept_features, inputs.sizes[b, kept_slots].float())
            clustering.check()
            kept, pruned = plan.kept, plan.pruned
            if self.recycler is not None and plan.recycled.numel():
                kept, clustering, kept_features = self._recycle(
                    inputs, b, plan, clustering, features
                )
                left = ~torch.isin(pruned, plan.recycled)
                pruned, pruned_features = pruned[left], pruned_features[left]
        positions = inputs.positions[b]
        row = RowMergeInput(
            hidden=inputs.hidden[b],
            sizes=inputs.sizes[b],
            positions=positions if positions.dim() == 2 else positions[:, None],
            padding_mask=inputs.padding_mask[b],
            visual=plan.visual,
            kept=kept,
            pruned=pruned,
            clustering=clustering,
            kept_features=kept_features,
            pruned_features=pruned_features,
            retrieval_radius=self.stage.retrieval_radius,
            position_mode=self.stage.position_mode,
        )
        with _timed(times, "merge", device):
            return self.merger.merge(row)

    def _recycle(
        self,
        inputs: LayerInputs,
        b: int,
        plan: _RowPlan,
        clustering: Clustering,
        features: Tensor | None,
    ) -> tuple[Tensor, Clustering, Tensor]:
        """Cluster the row's recycled tokens and join them to the kept ones: (kept and recycled
        indices into ``plan.visual``, their clustering, their features)."""
        assert self.recycler is not None and inputs.sizes is not None
        recycled_slots = plan.visual[plan.recycled]
        if features is None:
            recycled_features = torch.zeros(recycled_slots.numel(), 0, device=recycled_slots.device)
        else:
            recycled_features = features[b, recycled_slots]
        recycled_clustering = self.recycler.cluster(
            recycled_features, inputs.sizes[b, recycled_slots].float()
        )
        recycled_clustering.check()
        union, joined = join_clusterings(plan.kept, clustering, plan.recycled, recycled_clustering)
        union_features = (
            features[b, plan.visual[union]]
            if features is not None
            else torch.zeros(union.numel(), 0, device=union.device)
        )
        return union, joined, union_features


def stack_rows(inputs: LayerInputs, rows: list[RowReduction], stats: ReductionStats) -> Reduction:
    """Stack rows of different lengths, padding each at the end with masked slots (also how a
    reduction decided elsewhere, a vision stage's, is applied to a layer's inputs)."""
    assert inputs.positions is not None
    batch, _, dim = inputs.hidden.shape
    longest = max(row.slots.numel() for row in rows)
    device = inputs.hidden.device
    n_components = rows[0].positions.shape[1]
    slots = torch.zeros(batch, longest, dtype=torch.long, device=device)
    mask = torch.zeros(batch, longest, dtype=torch.bool, device=device)
    hidden = torch.zeros(batch, longest, dim, dtype=inputs.hidden.dtype, device=device)
    sizes = torch.ones(batch, longest, dtype=torch.float32, device=device)
    positions = torch.zeros(
        batch, longest, n_components, dtype=inputs.positions.dtype, device=device
    )
    assignment = torch.full(inputs.hidden.shape[:2], -1, dtype=torch.long, device=device)
    for b, row in enumerate(rows):
        length = row.slots.numel()
        slots[b, :length], mask[b, :length] = row.slots, True
        hidden[b, :length], sizes[b, :length] = row.hidden, row.sizes
        positions[b, :length] = row.positions
        if row.assignment is not None:
            assignment[b] = row.assignment
        else:  # a merger that does not report its clusters: survivors map to themselves
            assignment[b, row.slots] = row.slots
    if inputs.positions.dim() == 2:
        positions = positions[..., 0]
    visual = inputs.real_visual_mask.gather(1, slots) & mask
    return Reduction(slots, mask, hidden, sizes, positions, visual, stats, assignment)


def reduce(
    inputs: LayerInputs, config: StageConfig | PactConfig | str | dict, stage: int = 0
) -> Reduction:
    """Run one stage of ``config`` (a stage, a PactConfig, a preset name or file) on ``inputs``.

    Builds the components each call; keep a :class:`Pipeline` to reuse them.
    """
    if not isinstance(config, StageConfig):
        full = PactConfig.load(config)
        if not full.stages:
            raise ValueError("this config has no reduction stage (preset 'none'?)")
        if not 0 <= stage < len(full.stages):
            raise ValueError(f"stage must be in [0, {len(full.stages) - 1}]; got {stage}")
        config = full.stages[stage]
    return Pipeline(config)(inputs)
