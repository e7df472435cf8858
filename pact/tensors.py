"""The tensors that flow between pact's components: one layer's inputs and a clustering.

This module is the bottom layer of pact: plain torch, no transformers, no configs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pact.lazy import lazy_module

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


ProjectionFn = Callable[[bool], tuple["Tensor", "Tensor"]]
"""``fn(rotary) -> (queries, keys)``: shapes ``[B, Hq, N, d]`` and ``[B, Hkv, N, d]``."""


class QKSource:
    """Queries and keys of one layer, before or after rotary embedding, made on demand.

    Scorers and clusterers ask only for what they use (EUTI the un-rotated pair, DBDPC the
    rotated keys), so a hook can pass a callable and pay only for those projections.
    Results are cached per ``rotary`` flag for the lifetime of the object.
    """

    def __init__(self, fn: ProjectionFn):
        self._fn = fn
        self._cache: dict[bool, tuple[Tensor, Tensor]] = {}

    @classmethod
    def from_tensors(
        cls,
        queries: Tensor,
        keys: Tensor,
        queries_rotary: Tensor | None = None,
        keys_rotary: Tensor | None = None,
    ) -> QKSource:
        """Wrap precomputed tensors; missing rotary ones default to the un-rotated ones."""
        rotary = (
            queries if queries_rotary is None else queries_rotary,
            keys if keys_rotary is None else keys_rotary,
        )
        pairs = {False: (queries, keys), True: rotary}
        return cls(lambda is_rotary: pairs[is_rotary])

    def get(self, rotary: bool) -> tuple[Tensor, Tensor]:
        if rotary not in self._cache:
            queries, keys = self._fn(rotary)
            if queries.dim() != 4 or keys.dim() != 4:
                raise ValueError(
                    "queries and keys must be [batch, heads, tokens, head_dim]; got "
                    f"{tuple(queries.shape)} and {tuple(keys.shape)}"
                )
            if queries.shape[1] % keys.shape[1]:
                raise ValueError(
                    f"query heads ({queries.shape[1]}) must be a multiple of key heads "
                    f"({keys.shape[1]})"
                )
            self._cache[rotary] = (queries, keys)
        return self._cache[rotary]

    def queries(self, rotary: bool) -> Tensor:
        return self.get(rotary)[0]

    def keys(self, rotary: bool) -> Tensor:
        return self.get(rotary)[1]


@dataclass
class TowerAttention:
    """A vision tower's own attention, per token a vision stage sees (VisionZip's signal).

    Rows are images; a token is what the language model receives (a patch, or Qwen-VL's
    2x2 patches merged into one token, whose values are summed over its patches).
    """

    received: Tensor
    """``[B, N]`` float32 attention each token receives, averaged over heads and over every
    query of its image (or attention window)."""
    cls: Tensor | None = None
    """``[B, N]`` float32 attention the [CLS] token pays each token, summed over heads; None
    for towers without a [CLS] token (SigLIP, Qwen-VL)."""


@dataclass
class LayerInputs:
    """One decoder layer's input for a batch, as the pipeline sees it.

    Rows may hold different numbers of visual tokens; padding is marked by ``padding_mask``.
    """

    hidden: Tensor
    """``[B, N, D]`` hidden states entering the layer (any float dtype)."""
    visual_mask: Tensor
    """``[B, N]`` bool, True at visual (image or video) tokens."""
    qk: QKSource | None = None
    """Queries and keys of this layer; needed by scorers and key-based clustering."""
    positions: Tensor | None = None
    """``[B, N]`` or ``[B, N, C]`` position ids (``C = 3`` for M-RoPE); default ``arange``."""
    sizes: Tensor | None = None
    """``[B, N]`` how many original tokens each token stands for; default ones."""
    padding_mask: Tensor | None = None
    """``[B, N]`` bool, True at real tokens, False at padding; default all True."""
    tower: TowerAttention | None = None
    """The vision tower's attention, for a stage placed on the vision side; None elsewhere."""

    def __post_init__(self) -> None:
        if self.hidden.dim() != 3:
            raise ValueError(f"hidden must be [batch, tokens, dim]; got {tuple(self.hidden.shape)}")
        if not self.hidden.is_floating_point():
            raise ValueError(f"hidden must be a float tensor; got {self.hidden.dtype}")
        batch, tokens, _ = self.hidden.shape
        device = self.hidden.device
        if self.visual_mask.shape != (batch, tokens) or self.visual_mask.dtype != torch.bool:
            raise ValueError(
                f"visual_mask must be a bool tensor of shape {(batch, tokens)}; got "
                f"{self.visual_mask.dtype} {tuple(self.visual_mask.shape)}"
            )
        if self.padding_mask is None:
            self.padding_mask = torch.ones(batch, tokens, dtype=torch.bool, device=device)
        elif self.padding_mask.shape != (batch, tokens) or self.padding_mask.dtype != torch.bool:
            raise ValueError(f"padding_mask must be a bool tensor of shape {(batch, tokens)}")
        if self.sizes is None:
            self.sizes = torch.ones(batch, tokens, dtype=torch.float32, device=device)
        elif self.sizes.shape != (batch, tokens):
            raise ValueError(
                f"sizes must have shape {(batch, tokens)}; got {tuple(self.sizes.shape)}"
            )
        if self.positions is None:
            self.positions = torch.arange(tokens, device=device).expand(batch, tokens).clone()
        elif tuple(self.positions.shape[:2]) != (batch, tokens) or self.positions.dim() > 3:
            raise ValueError(
                f"positions must be [batch, tokens] or [batch, tokens, components] with "
                f"batch, tokens = {(batch, tokens)}; got {tuple(self.positions.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    @property
    def real_visual_mask(self) -> Tensor:
        """Visual tokens that are not padding."""
        assert self.padding_mask is not None
        return self.visual_mask & self.padding_mask

    def prefix_mask(self) -> Tensor:
        """``[B, N]`` True from the first real token up to the row's last visual token."""
        assert self.padding_mask is not None
        tokens = self.hidden.shape[1]
        index = torch.arange(tokens, device=self.hidden.device)
        last_visual = torch.where(self.real_visual_mask, index, -1).amax(dim=1, keepdim=True)
        return self.padding_mask & (index <= last_visual)


# Guards floor() against products such as 0.29 * 100 = 28.999999999999996.
_FLOOR_SLACK = 1e-9


def keep_count(n_visual: int, keep_ratio: float) -> int:
    """``floor(keep_ratio * n)``, at least 1 when there are tokens and the ratio is positive."""
    kept = math.floor(keep_ratio * n_visual + _FLOOR_SLACK)
    if n_visual and keep_ratio > 0:
        kept = max(kept, 1)
    return min(kept, n_visual)


def image_groups(visual_mask: Tensor) -> Tensor:
    """``[B, N]`` long: which image of its row each visual token belongs to, -1 elsewhere.

    An image is a maximal run of consecutive visual tokens (``visual_mask`` True): an
    any-resolution image (base tile, crops and newline tokens) is one run, and the images of
    a multi-image row are separate runs wherever any other token lies between them (Qwen-VL's
    vision start/end tokens, the text or newline a chat template puts after a placeholder).
    """
    previous = torch.zeros_like(visual_mask)
    previous[:, 1:] = visual_mask[:, :-1]
    starts = visual_mask & ~previous
    index = torch.cumsum(starts.long(), dim=1) - 1
    return torch.where(visual_mask, index, -1)


@dataclass
class Budget:
    """How many visual tokens a stage keeps, per group of visual tokens in each row.

    A group is an image (a stage with ``keep_tokens``) or a row's whole set of visual tokens
    (``keep_ratio``). Scorers whose choice depends on the count (DART) or on the groups
    (DivPrune) read it; the pipeline keeps ``counts[b][g]`` best-scored tokens of group ``g``.
    """

    groups: Tensor
    """``[B, N]`` long: group of each real visual token within its row, -1 elsewhere."""
    counts: list[list[int]]
    """Per row, per group (0, 1, ...): visual tokens kept."""

    @classmethod
    def whole_rows(cls, visual_mask: Tensor, keep_ratio: float) -> Budget:
        """One group per row holding all its ``n`` visual tokens, keeping
        :func:`keep_count` ``(n, keep_ratio)`` of them."""
        groups = torch.where(visual_mask, 0, -1)
        counts = [[keep_count(int(n), keep_ratio)] for n in visual_mask.sum(dim=1).tolist()]
        return cls(groups, counts)

    @classmethod
    def per_image(cls, visual_mask: Tensor, tokens: int) -> Budget:
        """One group per image (:func:`image_groups`), each keeping ``tokens`` (or all if fewer)."""
        groups = image_groups(visual_mask)
        counts = []
        for row in groups:
            sizes = torch.bincount(row[row >= 0]).tolist() if bool((row >= 0).any()) else []
            counts.append([min(tokens, size) for size in sizes])
        return cls(groups, counts)

    def members(self, row: int) -> list[Tensor]:
        """Sequence slots of each group of ``row``, ascending, in group order."""
        return [
            torch.nonzero(self.groups[row] == group).flatten()
            for group in range(len(self.counts[row]))
        ]


@dataclass
class Clustering:
    """A clusterer's answer for one row: an assignment of ``n`` tokens to clusters.

    ``labels[i]`` is the cluster of token ``i`` (``-1``: token dropped, e.g. DBSCAN noise);
    ``centers[c]`` is the index of cluster ``c``'s representative, a member of the cluster.
    """

    labels: Tensor
    centers: Tensor

    def check(self) -> None:
        """Raise if the assignment is malformed (used by the pipeline on plugin output)."""
        n_clusters = self.centers.numel()
        if self.labels.dim() != 1 or self.centers.dim() != 1:
            raise ValueError("Clustering.labels and .centers must be 1-D")
        if n_clusters and (self.labels.max() >= n_clusters or self.labels.min() < -1):
            raise ValueError(f"Clustering.labels must lie in [-1, {n_clusters - 1}]")
        if n_clusters and not torch.equal(
            self.labels[self.centers], torch.arange(n_clusters, device=self.labels.device)
        ):
            raise ValueError("each Clustering.centers[c] must be a member of cluster c")


@dataclass
class RowReduction:
    """A merger's answer for one row: the slots that survive and what they now hold."""

    slots: Tensor
    """``[M]`` ascending indices into the row's original sequence."""
    hidden: Tensor
    """``[M, D]`` hidden states at those slots (merged tokens replaced)."""
    sizes: Tensor
    """``[M]`` float32 sizes (original tokens each slot stands for)."""
    positions: Tensor
    """``[M, C]`` position ids."""
    retrieved: int = 0
    """Pruned visual tokens taken back into a cluster."""
    assignment: Tensor | None = None
    """``[N]`` long: for each input slot, the slot of the token it folded into (itself when
    it survives unmerged), -1 when removed. None: the merger did not say (a plugin not using
    ``fold_row``); the pipeline then infers survivors only."""


@dataclass
class StepTimes:
    """Seconds spent in each step of one reduction call."""

    score: float = 0.0
    cluster: float = 0.0
    merge: float = 0.0

    @property
    def total(self) -> float:
        return self.score + self.cluster + self.merge


@dataclass
class ReductionStats:
    """Counts per row, and times for the whole batch."""

    visual_in: list[int]
    after_prune: list[int]
    after_merge: list[int]
    retrieved: list[int]
    seconds: StepTimes = field(default_factory=StepTimes)
    tokens_in: list[int] = field(default_factory=list)
    """Per row, real tokens (text and visual) entering the stage."""
    tokens_out: list[int] = field(default_factory=list)
    """Per row, real tokens leaving it (what the following layers compute on)."""
    layer: int | None = None
    """Decoder layer of the stage (None: reduced outside a hooked model's stage)."""

    @property
    def reduction_ratio(self) -> float:
        """Fraction of visual tokens removed over the batch (0 when there were none)."""
        total_in = sum(self.visual_in)
        return 1.0 - sum(self.after_merge) / total_in if total_in else 0.0


@dataclass
class Reduction:
    """The pipeline's answer for a batch: rows padded at the end to the longest row."""

    kept_slots: Tensor
    """``[B, M]`` long, original sequence index of each surviving slot (0 at row padding)."""
    kept_mask: Tensor
    """``[B, M]`` bool, False at the padding added to even out row lengths."""
    hidden: Tensor
    """``[B, M, D]`` new hidden states, input dtype."""
    sizes: Tensor
    """``[B, M]`` float32 sizes (1 at padding)."""
    positions: Tensor
    """``[B, M]`` or ``[B, M, C]`` position ids, same layout as the input's."""
    visual_mask: Tensor
    """``[B, M]`` bool, True at surviving visual (possibly merged) tokens."""
    stats: ReductionStats
    assignment: Tensor | None = None
    """``[B, N]`` long, in the input's slots: the slot of the surviving token each input slot
    folded into (its own slot when kept alone or not visual; a cluster's center slot when
    merged or retrieved), -1 when removed (pruned and not retrieved, or dropped as noise)."""
