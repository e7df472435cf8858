"""The vision towers a vision stage reads: where their attention is, what the projector gets.

One adapter per tower layout, chosen from the model's class (never copied modelling code):
LLaVA-1.5's CLIP or SigLIP tower in front of a ``multi_modal_projector``, and Qwen2-VL's and
Qwen2.5-VL's tower, whose ``merger`` turns 2x2 patches into one language-model token. An
adapter captures the queries and keys of one tower layer (a pre-hook on its attention
module), turns the projector's input into rows of a :class:`pact.tensors.LayerInputs` (one
row per image, one token per language-model token) and writes a reduction back into it.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pact.tensors import QKSource, Reduction, TowerAttention


@dataclass
class Captured:
    """One tower layer's queries and keys, ``[S, H, d]`` (Qwen-VL: every image's patches in
    one sequence) or ``[B, T, H, d]`` (LLaVA: one row per image)."""

    queries: Tensor
    keys: Tensor
    segments: Tensor | None = None
    """Qwen-VL: cumulative lengths of the spans that attend to each other at that layer."""


class TokenKeys(QKSource):
    """Keys of merged-patch tokens (Qwen-VL: a token's 2x2 patches side by side); such a
    token has no query of its own, so asking for queries is an error naming the cause."""

    def __init__(self, keys: Tensor):
        super().__init__(self._refuse)
        self._keys = keys

    @staticmethod
    def _refuse(rotary: bool):
        raise ValueError(
            "a vision stage on Qwen-VL sees merged 2x2-patch tokens, which have no query of "
            "their own: use a scorer that reads the tower's attention, keys or features "
            "(visionzip, divprune, norm, random)"
        )

    def keys(self, rotary: bool) -> Tensor:
        return self._keys


@dataclass
class TowerRows:
    """The projector's input as a vision stage's rows (padded at the end)."""

    hidden: Tensor
    padding_mask: Tensor
    qk: QKSource
    tower: TowerAttention
    ids: list[Tensor] | None = None
    """Any-resolution LLaVA: per image, the flat (crop, token) index of each row slot."""
    layout: list[Tensor] | None = None
    """Per image, the row slot at each of its language-model positions, -1 at a token the
    model adds after the projector (a newline); None: position i is slot i."""


QUERY_CHUNK = 1024
"""Queries whose attention rows are formed at once: memory ``heads x QUERY_CHUNK x n``."""


def _logits(queries: Tensor, keys: Tensor) -> Tensor:
    """``[H, q, n]`` float32 scaled dot products of ``[q, H, d]`` queries and ``[n, H, d]`` keys."""
    q, k = queries.float().transpose(0, 1), keys.float().transpose(0, 1)
    return q @ k.transpose(1, 2) * q.shape[-1] ** -0.5


def received_attention(queries: Tensor, keys: Tensor) -> Tensor:
    """``[n]`` bidirectional softmax attention each token receives, averaged over heads and
    queries; formed :data:`QUERY_CHUNK` queries at a time (a large image's full map would
    not fit)."""
    total = torch.zeros(keys.shape[0], device=keys.device)
    for start in range(0, queries.shape[0], QUERY_CHUNK):
        rows = torch.softmax(_logits(queries[start : start + QUERY_CHUNK], keys), dim=-1)
        total += rows.sum(dim=(0, 1))
    return total / (queries.shape[0] * queries.shape[1])


def cls_attention(queries: Tensor, keys: Tensor) -> Tensor:
    """``[n]`` softmax attention of the first token ([CLS]) to every token, summed over heads."""
    return torch.softmax(_logits(queries[:1], keys), dim=-1)[:, 0].sum(dim=0)


def _resolve_layer(index: int, n_layers: int, what: str) -> int:
    resolved = index + n_layers if index < 0 else index
    if not 0 <= resolved < n_layers:
        raise ValueError(
            f"{what}: layer {index} is out of range; the tower has {n_layers} layers "
            f"({-n_layers}..{n_layers - 1})"
        )
    return resolved


class LlavaTower:
    """LLaVA-1.5: ``vision_tower`` (CLIP, with [CLS], or SigLIP, without), then the projector."""

    def __init__(self, model: nn.Module, tower_layer: int | None):
        inner = model.model
        config = model.config
        tower = inner.vision_tower
        # transformers 5 flattened CLIPVisionModel; SigLIP's still wraps a vision_model.
        self.vision_model = getattr(tower, "vision_model", tower)
        self.projector = inner.multi_modal_projector
        layers = self.vision_model.encoder.layers
        feature_layer = config.vision_feature_layer
        if not isinstance(feature_layer, int):
            raise ValueError(
                f"vision_feature_layer {feature_layer!r} concatenates several tower layers; "
                "a vision stage reads one (models with an int vision_feature_layer)"
            )
        self.has_cls = hasattr(self.vision_model.embeddings, "class_embedding")
        strategy = config.vision_feature_select_strategy
        if self.has_cls and strategy != "default":
            raise ValueError(
                f"vision_feature_select_strategy {strategy!r} sends the tower's [CLS] token to "
                "the language model; a vision stage needs 'default' with a [CLS] tower"
            )
        self.dropped = 1 if strategy == "default" else 0  # leading tower tokens not sent
        n_layers = len(layers)
        if tower_layer is None:
            produced = feature_layer % (n_layers + 1) - 1  # hidden_states[0] is the embedding
            if produced < 0:
                raise ValueError(
                    "vision_feature_layer reads the tower's embeddings, which no attention "
                    "produced; set tower_layer"
                )
            tower_layer = produced
        self.layer = _resolve_layer(tower_layer, n_layers, "tower_layer")
        self.attention = layers[self.layer].self_attn

    def capture(self, hidden: Tensor) -> Captured:
        attention = self.attention
        shape = (*hidden.shape[:2], -1, attention.head_dim)
        return Captured(attention.q_proj(hidden).view(shape), attention.k_proj(hidden).view(shape))

    def rows(self, features: Tensor, captured: Captured) -> TowerRows:
        drop = self.dropped
        received, cls = [], []
        for queries, keys in zip(captured.queries, captured.keys, strict=True):
            received.append(received_attention(queries, keys)[drop:])
            if self.has_cls:
                cls.append(cls_attention(queries, keys)[drop:])
        tower = TowerAttention(torch.stack(received), torch.stack(cls) if self.has_cls else None)
        queries = captured.queries[:, drop:].transpose(1, 2)
        keys = captured.keys[:, drop:].transpose(1, 2)
        padding = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return TowerRows(features, padding, QKSource.from_tensors(queries, keys), tower)

    def write_back(self, features: Tensor, reduction: Reduction) -> Tensor:
        out = features.clone()
        for row in range(features.shape[0]):
            slots = reduction.kept_slots[row][reduction.kept_mask[row]]
            out[row, slots] = reduction.hidden[row][reduction.kept_mask[row]].to(out.dtype)
        return out


class QwenTower:
    """Qwen2-VL / Qwen2.5-VL: ``visual`` (no [CLS]); its ``merger`` makes one token of 2x2
    patches. Qwen2.5-VL's blocks see the patches in window order, restored after the merger."""

    def __init__(self, model: nn.Module, tower_layer: int | None):
        self.visual = model.model.visual
        self.projector = self.visual.merger
        self.unit = self.visual.spatial_merge_size**2
        self.has_cls = False
        blocks = self.visual.blocks
        if tower_layer is None:
            full = getattr(self.visual, "fullatt_block_indexes", None)
            tower_layer = max(full) if full else len(blocks) - 1
        self.layer = _resolve_layer(tower_layer, len(blocks), "tower_layer")
        self.attention = blocks[self.layer].attn
        self.windowed = hasattr(self.visual, "window_size")

    @property
    def module(self):
        """The tower's modelling module (its rotary and window functions). Looked up, not
        stored: a module object cannot be deep-copied with the model."""
        return sys.modules[type(self.visual).__module__]

    def capture(self, hidden: Tensor, segments: Tensor, embeddings) -> Captured:
        attention = self.attention
        packed = attention.qkv(hidden).reshape(hidden.shape[0], 3, attention.num_heads, -1)
        queries, keys = packed[:, 0], packed[:, 1]
        cos, sin = embeddings
        queries, keys = self.module.apply_rotary_pos_emb_vision(queries, keys, cos, sin)
        return Captured(queries, keys, segments)

    def unit_spans(self, grid_thw: Tensor) -> list[tuple[int, int]]:
        """Each image's language-model tokens, as a range of merged-patch units."""
        counts = (grid_thw.prod(dim=1) // self.unit).tolist()
        return list(itertools.pairwise([0, *torch.tensor(counts).cumsum(0).tolist()]))

    def llm_order(self, grid_thw: Tensor, n_units: int) -> Tensor:
        """For each language-model token, the unit (in the merger's input order) it comes
        from: Qwen2.5-VL's blocks and merger see window order, restored after the merger."""
        if not self.windowed:
            return torch.arange(n_units, device=grid_thw.device)
        visual = self.visual
        function = getattr(self.module, "get_vision_window_index", None)
        if function is None:  # transformers before the shared vision_utils: a method
            window_index, _ = visual.get_window_index(grid_thw)
        else:
            window_index, _ = function(
                grid_thw,
                spatial_merge_size=visual.spatial_merge_size,
                window_size=visual.window_size,
                patch_size=visual.patch_size,
            )
        return torch.argsort(window_index.to(grid_thw.device))

    def rows(self, features: Tensor, captured: Captured, grid_thw: Tensor) -> TowerRows:
        """One row per image, its tokens in the language model's (raster) order."""
        received = torch.zeros(features.shape[0], device=features.device)
        for start, end in itertools.pairwise(captured.segments.tolist()):
            span = slice(start, end)
            received[span] = received_attention(captured.queries[span], captured.keys[span])
        n_units, unit = features.shape[0] // self.unit, self.unit
        heads, head_dim = captured.keys.shape[1:]
        order = self.llm_order(grid_thw, n_units).to(features.device)
        unit_hidden = features.reshape(n_units, -1)[order]
        unit_keys = captured.keys.reshape(n_units, unit * heads, head_dim)
        unit_keys = unit_keys.view(n_units, unit, heads, head_dim).transpose(1, 2)
        unit_keys = unit_keys.reshape(n_units, heads, unit * head_dim)[order]
        unit_scores = received.view(n_units, unit).sum(dim=1)[order]
        spans = self.unit_spans(grid_thw)
        longest = max(end - start for start, end in spans)
        hidden = features.new_zeros(len(spans), longest, unit_hidden.shape[1])
        keys = unit_keys.new_zeros(len(spans), heads, longest, unit * head_dim)
        scores = torch.zeros(len(spans), longest, device=features.device)
        padding = torch.zeros(len(spans), longest, dtype=torch.bool, device=features.device)
        for image, (start, end) in enumerate(spans):
            count = end - start
            hidden[image, :count] = unit_hidden[start:end]
            keys[image, :, :count] = unit_keys[start:end].transpose(0, 1)
            scores[image, :count] = unit_scores[start:end]
            padding[image, :count] = True
        return TowerRows(hidden, padding, TokenKeys(keys), TowerAttention(scores))

    def write_back(self, features: Tensor, reduction: Reduction, grid_thw: Tensor) -> Tensor:
        n_units = features.shape[0] // self.unit
        units = features.clone().reshape(n_units, -1)
        order = self.llm_order(grid_thw, n_units).to(features.device)
        for image, (start, end) in enumerate(self.unit_spans(grid_thw)):
            # Row padding (images of different sizes) survives as non-visual slots: skip it.
            slots = reduction.kept_slots[image]
            kept = reduction.kept_mask[image] & (slots < end - start)
            units[order[start + slots[kept]]] = reduction.hidden[image][kept].to(units.dtype)
        return units.view_as(features)
