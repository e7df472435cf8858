"""Small synthetic layers for pipeline tests: rows of text and visual tokens, their queries
and keys, batching with left or right padding, and reading one row back out of a Reduction.

Queries and keys are computed row by row from the row's own hidden states and positions, so
a row's projections are bit-identical alone and inside any batch; any difference between
the two is then the pipeline's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pact import LayerInputs, QKSource, Reduction, TowerAttention

DIM = 8
Q_HEADS, KV_HEADS, HEAD_DIM = 4, 2, 4
_GENERATOR = torch.Generator().manual_seed(1234)
W_Q = torch.randn(DIM, Q_HEADS * HEAD_DIM, generator=_GENERATOR)
W_K = torch.randn(DIM, KV_HEADS * HEAD_DIM, generator=_GENERATOR)
PROTOTYPES = torch.randn(3, DIM, generator=_GENERATOR) * 3.0


@dataclass
class Row:
    """One unpadded sequence: hidden ``[n, D]``, visual mask ``[n]``, positions ``[n]``."""

    hidden: Tensor
    visual: Tensor
    positions: Tensor


def make_row(n_before: int, n_visual: int, n_after: int, seed: int, noise: float = 0.05) -> Row:
    """Text tokens around a run of visual tokens drawn near three prototypes (so they cluster)."""
    generator = torch.Generator().manual_seed(seed)
    text_before = torch.randn(n_before, DIM, generator=generator)
    text_after = torch.randn(n_after, DIM, generator=generator)
    which = torch.randint(0, len(PROTOTYPES), (n_visual,), generator=generator)
    visual = PROTOTYPES[which] + noise * torch.randn(n_visual, DIM, generator=generator)
    # Distinct norms keep norm/EUTI rankings free of near-ties.
    visual = visual * (1.0 + 0.1 * torch.rand(n_visual, 1, generator=generator))
    hidden = torch.cat([text_before, visual, text_after])
    mask = torch.zeros(len(hidden), dtype=torch.bool)
    mask[n_before : n_before + n_visual] = True
    return Row(hidden, mask, torch.arange(len(hidden)))


def rotate(x: Tensor, positions: Tensor) -> Tensor:
    """A mild rotary embedding of ``[H, n, d]`` by ``positions`` ``[n]`` (or ``[n, C]``)."""
    if positions.dim() == 2:
        positions = positions[:, 0]
    half = x.shape[-1] // 2
    freqs = 0.01 / (100.0 ** (torch.arange(half, dtype=torch.float32) / half))
    angle = positions.float()[:, None] * freqs[None, :]
    cos, sin = angle.cos(), angle.sin()
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def row_qk(hidden: Tensor, positions: Tensor, rotary: bool) -> tuple[Tensor, Tensor]:
    """``[Hq, n, d]`` queries and ``[Hkv, n, d]`` keys of one row."""
    n = hidden.shape[0]
    queries = (hidden.float() @ W_Q).view(n, Q_HEADS, HEAD_DIM).transpose(0, 1)
    keys = (hidden.float() @ W_K).view(n, KV_HEADS, HEAD_DIM).transpose(0, 1)
    if rotary:
        queries, keys = rotate(queries, positions), rotate(keys, positions)
    return queries, keys


def qk_source(hidden: Tensor, positions: Tensor, calls: list | None = None) -> QKSource:
    """Per-row projections of a ``[B, N, D]`` batch; ``calls`` records each ``rotary`` asked."""

    def project(rotary: bool) -> tuple[Tensor, Tensor]:
        if calls is not None:
            calls.append(rotary)
        pairs = [row_qk(hidden[b], positions[b], rotary) for b in range(hidden.shape[0])]
        queries = torch.stack([pair[0] for pair in pairs])
        keys = torch.stack([pair[1] for pair in pairs])
        return queries.to(hidden.dtype), keys.to(hidden.dtype)

    return QKSource(project)


def tower_of(hidden: Tensor) -> TowerAttention:
    """A vision stage's tower signal made token by token from ``[B, N, D]`` hidden states, so
    a row's signal is the same alone and in any batch (read by VisionZip's scorer only)."""
    return TowerAttention(received=hidden.float().norm(dim=-1), cls=hidden.float()[..., 0].abs())


def single(row: Row, calls: list | None = None) -> LayerInputs:
    """A batch of one unpadded row."""
    hidden, positions = row.hidden[None], row.positions[None]
    return LayerInputs(
        hidden=hidden,
        visual_mask=row.visual[None],
        qk=qk_source(hidden, positions, calls),
        positions=positions,
        tower=tower_of(hidden),
    )


def batch(rows: list[Row], sides: list[str], extra: int = 2, seed: int = 99) -> LayerInputs:
    """Rows padded to a common length (``extra`` more than the longest), each on its side.

    Padding slots get finite garbage hidden states and position 0.
    """
    generator = torch.Generator().manual_seed(seed)
    length = max(len(row.hidden) for row in rows) + extra
    hidden = torch.randn(len(rows), length, DIM, generator=generator)
    visual = torch.zeros(len(rows), length, dtype=torch.bool)
    padding = torch.zeros(len(rows), length, dtype=torch.bool)
    positions = torch.zeros(len(rows), length, *rows[0].positions.shape[1:], dtype=torch.long)
    for b, (row, side) in enumerate(zip(rows, sides, strict=True)):
        start = offset(row, side, length)
        span = slice(start, start + len(row.hidden))
        hidden[b, span], visual[b, span], padding[b, span] = row.hidden, row.visual, True
        positions[b, span] = row.positions
    return LayerInputs(
        hidden=hidden,
        visual_mask=visual,
        qk=qk_source(hidden, positions),
        positions=positions,
        padding_mask=padding,
        tower=tower_of(hidden),
    )


def offset(row: Row, side: str, length: int) -> int:
    """Index of the row's first real token once padded to ``length`` on ``side``."""
    return length - len(row.hidden) if side == "left" else 0


@dataclass
class RowOut:
    """One row of a Reduction, padding dropped, slots relative to the unpadded row."""

    slots: Tensor
    hidden: Tensor
    sizes: Tensor
    positions: Tensor
    visual: Tensor


def row_out(reduction: Reduction, inputs: LayerInputs, b: int, start: int = 0) -> RowOut:
    """Row ``b`` of ``reduction``, keeping only slots that hold real (non-padding) tokens."""
    assert inputs.padding_mask is not None
    slots = reduction.kept_slots[b]
    real = reduction.kept_mask[b] & inputs.padding_mask[b, slots]
    return RowOut(
        slots=slots[real] - start,
        hidden=reduction.hidden[b, real],
        sizes=reduction.sizes[b, real],
        positions=reduction.positions[b, real],
        visual=reduction.visual_mask[b, real],
    )


def assert_rows_equal(got: RowOut, want: RowOut) -> None:
    """Same slots, positions and visual flags exactly; hidden and sizes to float rounding."""
    assert torch.equal(got.slots, want.slots), (got.slots, want.slots)
    assert torch.equal(got.positions, want.positions)
    assert torch.equal(got.visual, want.visual)
    torch.testing.assert_close(got.sizes, want.sizes, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.hidden, want.hidden, rtol=1e-5, atol=1e-5)
