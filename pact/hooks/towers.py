"""The vision towers a vision stage reads: where their attention is, what the projector gets.

One adapter per tower layout, named by the family table's ``tower``
(:data:`pact.hooks.families.VLM_FAMILIES`; never copied modelling code): LLaVA-1.5's CLIP or
SigLIP tower in front of a ``multi_modal_projector``, and Qwen2-VL's and Qwen2.5-VL's tower,
whose ``merger`` turns 2x2 patches into one language-model token. An adapter captures the
queries and keys of one tower layer (a pre-hook on its attention module) and lists the
projector's input as :class:`TowerTokens`; :func:`stack_images` makes them the rows of a
:class:`pact.tensors.LayerInputs` (one row per image) and :func:`write_back` puts a
reduction's features back, the same for every adapter.
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
class TowerTokens:
    """The projector's input as flat language-model tokens, with the tower's signals.

    A token is one row of ``features.reshape(n, -1)``: a patch, or Qwen-VL's 2x2 patches
    side by side."""

    features: Tensor
    """``[n, F]`` what the projector maps, a token per row (in the projector's order)."""
    received: Tensor
    """``[n]`` float32 attention each token receives (see :class:`TowerAttention`)."""
    cls: Tensor | None
    """``[n]`` float32 attention the [CLS] token pays each token; None without [CLS]."""
    keys: Tensor
    """``[n, H, d]`` the tower layer's keys."""
    queries: Tensor | None
    """``[n, H, d]`` its queries; None where a token has none (merged patches)."""
    images: list[Tensor]
    """Per image, the index of each of its tokens, in the language model's order."""
    layout: list[Tensor] | None = None
    """Per image, the row slot at each of its language-model positions, -1 at a token the
    model adds after the projector (a newline); None: position i is slot i."""


@dataclass
class TowerRows:
    """The projector's input as a vision stage's rows (padded at the end)."""

    hidden: Tensor
    padding_mask: Tensor
    qk: QKSource
    tower: TowerAttention
    ids: list[Tensor]
    """Per image, the token (row of the flat features) at each row slot."""
    tokens: int
    """Tokens of the flat features (some may be in no image: cut off by unpadding)."""
    layout: list[Tensor] | None = None
    """As :attr:`TowerTokens.layout`."""


def stack_images(tokens: TowerTokens) -> TowerRows:
    """One row per image, its tokens in the language model's order, padded at the end."""
    counts = [ids.numel() for ids in tokens.images]
    n_images, longest = len(counts), max(counts)
    device = tokens.features.device
    heads, width = tokens.keys.shape[1:]
    hidden = tokens.features.new_zeros(n_images, longest, tokens.features.shape[1])
    keys = tokens.keys.new_zeros(n_images, heads, longest, width)
    queries = None if tokens.queries is None else torch.zeros_like(keys)
    received = torch.zeros(n_images, longest, device=device)
    cls = None if tokens.cls is None else torch.zeros_like(received)
    padding = torch.zeros(n_images, longest, dtype=torch.bool, device=device)
    for image, ids in enumerate(tokens.images):
        ids, count = ids.to(device), ids.numel()
        hidden[image, :count] = tokens.features[ids]
        keys[image, :, :count] = tokens.keys[ids].transpose(0, 1)
        if queries is not None:
            queries[image, :, :count] = tokens.queries[ids].transpose(0, 1)
        received[image, :count] = tokens.received[ids]
        if cls is not None:
            cls[image, :count] = tokens.cls[ids]
        padding[image, :count] = True
    qk = TokenKeys(keys) if queries is None else QKSource.from_tensors(queries, keys)
    tower = TowerAttention(received, cls)
    n_tokens = tokens.features.shape[0]
    return TowerRows(hidden, padding, qk, tower, tokens.images, n_tokens, tokens.layout)


def write_back(features: Tensor, reduction: Reduction, rows: TowerRows) -> Tensor:
    """``features`` with each image's surviving (merged) tokens written at their places."""
    out = features.contiguous().clone()  # the tower's slice [:, 1:] is not contiguous
    flat = out.view(rows.tokens, -1)
    for image, ids in enumerate(rows.ids):
        # Row padding (images of different sizes) survives as non-visual slots: skip it.
        slots = reduction.kept_slots[image]
        kept = reduction.kept_mask[image] & rows.padding_mask[image, slots]
        flat[ids.to(out.device)[slots[kept]]] = reduction.hidden[image][kept].to(out.dtype)
    return out


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

    def capture(self, args: tuple, kwargs: dict) -> Captured:
        """Queries and keys of the attention module's input (a forward pre-hook's)."""
        hidden = args[0] if args else kwargs["hidden_states"]
        attention = self.attention
        shape = (*hidden.shape[:2], -1, attention.head_dim)
        return Captured(attention.q_proj(hidden).view(shape), attention.k_proj(hidden).view(shape))

    def crop_tokens(self, features: Tensor, captured: Captured) -> TowerTokens:
        """Every tower row's tokens (an image's, or a crop's) one after another."""
        drop = self.dropped
        received, cls = [], []
        for queries, keys in zip(captured.queries, captured.keys, strict=True):
            received.append(received_attention(queries, keys)[drop:])
            if self.has_cls:
                cls.append(cls_attention(queries, keys)[drop:])
        rows, per_row = features.shape[:2]
        shape = (rows * per_row, *captured.keys.shape[2:])
        return TowerTokens(
            features=features.reshape(rows * per_row, -1),
            received=torch.cat(received),
            cls=torch.cat(cls) if self.has_cls else None,
            keys=captured.keys[:, drop:].reshape(shape),
            queries=captured.queries[:, drop:].reshape(shape),
            images=list(torch.arange(rows * per_row, device=features.device).view(rows, -1)),
        )

    def install(self, handle) -> list:
        """Hooks beyond the attention's and the projector's: none."""
        return []

    def tokens(self, features: Tensor, call) -> TowerTokens:
        """LLaVA-1.5: one tower row per image, sent to the language model as it is."""
        return self.crop_tokens(features, call.tower)


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

    def install(self, handle) -> list:
        """The image grid is an argument of the tower, not of the block: hook the tower."""
        return [self.visual.register_forward_pre_hook(handle.record_grid, with_kwargs=True)]

    def capture(self, args: tuple, kwargs: dict) -> Captured:
        """Queries and keys (rotated) of the block attention's input, and its spans."""
        hidden = args[0] if args else kwargs["hidden_states"]
        attention = self.attention
        packed = attention.qkv(hidden).reshape(hidden.shape[0], 3, attention.num_heads, -1)
        queries, keys = packed[:, 0], packed[:, 1]
        cos, sin = kwargs["position_embeddings"]
        queries, keys = self.module.apply_rotary_pos_emb_vision(queries, keys, cos, sin)
        return Captured(queries, keys, kwargs["cu_seqlens"])

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

    def tokens(self, features: Tensor, call) -> TowerTokens:
        """A token is a unit of 2x2 patches; each image's in the language model's (raster)
        order."""
        captured, grid_thw = call.tower, call.grid_thw
        received = torch.zeros(features.shape[0], device=features.device)
        for start, end in itertools.pairwise(captured.segments.tolist()):
            span = slice(start, end)
            received[span] = received_attention(captured.queries[span], captured.keys[span])
        n_units, unit = features.shape[0] // self.unit, self.unit
        heads, head_dim = captured.keys.shape[1:]
        keys = captured.keys.reshape(n_units, unit, heads, head_dim).transpose(1, 2)
        order = self.llm_order(grid_thw, n_units).to(features.device)
        counts = (grid_thw.prod(dim=1) // unit).tolist()
        return TowerTokens(
            features=features.reshape(n_units, -1),
            received=received.view(n_units, unit).sum(dim=1),
            cls=None,
            keys=keys.reshape(n_units, heads, unit * head_dim),
            queries=None,
            images=list(torch.split(order, counts)),
        )
