"""Model families pact attaches to: one small table, no copied model files.

:data:`VLM_FAMILIES` is the one place that says what differs between families: the hook
reads their token ids, :mod:`pact.viz` their visual grid, :mod:`pact.models.tiny` which of
them it builds, and the command line's help lists them from it. This module imports
neither torch nor transformers until a model is handed to it.

Every supported decoder layer is called as ``layer(hidden, attention_mask=...,
position_embeddings=(cos, sin), position_ids=..., cache=..., **kwargs)`` and its
``self_attn`` has ``q_proj``/``k_proj`` (plus optional ``q_norm``/``k_norm``) and uses the
module-level ``apply_rotary_pos_emb`` of its modeling file. That is all pact relies on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pact.lazy import lazy_module
from pact.tensors import QKSource

if TYPE_CHECKING:
    from torch import Tensor, nn

torch = lazy_module("torch")


Grid = Literal["patches", "anyres", "merged"]


@dataclass(frozen=True)
class Family:
    """What differs between supported VLM families."""

    label: str
    """Human name, used in messages and the docs' supported-models table."""
    model_class: str
    """The transformers class the tests build (the docs' table shows it)."""
    decoders: str
    """The text decoders tested with it, as the docs' table shows them."""
    video: bool = False
    """Whether the model takes video (its video tokens are reduced like image tokens)."""
    grid: Grid | None = None
    """How the processor turns an image into visual tokens (what :mod:`pact.viz` draws and
    :mod:`pact.models.tiny_inputs` reproduces): ``patches``, one square patch grid;
    ``anyres``, a base tile, then the grid of the crops with a newline token per row;
    ``merged``, 2 x 2 patches merged into one token, between vision start and end tokens
    (Qwen-VL). None: no overlay is drawn for the family."""
    tiny: bool = False
    """Whether :mod:`pact.models.tiny` builds random-weight models of the family."""
    injected: str | None = None
    """Dotted path, in the model's config, of the list of vision layers whose features
    are added to the decoder's hidden states after its first layers, one per layer
    (Qwen3-VL's DeepStack); stages must come after those layers. None: no such feature."""
    refusal: str | None = None
    """Why pact refuses the family at attach time (None: supported)."""
    tower: Literal["llava", "anyres", "qwen"] | None = None
    """The tower layout a vision stage (VisionZip's) reads, :mod:`pact.hooks.towers`'
    adapters: ``llava``, a CLIP or SigLIP tower before ``multi_modal_projector``;
    ``anyres``, the same on crops that the model packs after the projector; ``qwen``, a
    ``visual`` whose ``merger`` makes a token of 2x2 patches. None: no vision stage."""


_LLAVA_DECODERS = "Llama, Qwen2, Mistral, Gemma"
_DEEPSTACK = "vision_config.deepstack_visual_indexes"
_GEMMA3_REFUSAL = (
    "Gemma 3 lets the tokens of one image attend to each other in both directions, which "
    "pact's reduced layers (causal attention over the kept tokens) do not reproduce; its "
    "text decoder alone (Gemma3ForCausalLM, sliding windows included) is supported with "
    "handle.set_visual_mask or visual_token_ids"
)

VLM_FAMILIES: dict[str, Family] = {
    "llava": Family(
        "LLaVA-1.5", "LlavaForConditionalGeneration", _LLAVA_DECODERS, grid="patches", tiny=True,
        tower="llava",
    ),
    "llava_next": Family(
        "LLaVA-NeXT", "LlavaNextForConditionalGeneration", _LLAVA_DECODERS, grid="anyres",
        tiny=True, tower="anyres",
    ),
    "llava_next_video": Family(
        "LLaVA-NeXT-Video", "LlavaNextVideoForConditionalGeneration",
        "as LLaVA-NeXT (not built by the tests)",
        video=True,
    ),
    "llava_onevision": Family(
        "LLaVA-OneVision", "LlavaOnevisionForConditionalGeneration", _LLAVA_DECODERS,
        video=True, grid="anyres", tiny=True, tower="anyres",
    ),
    "qwen2_vl": Family(
        "Qwen2-VL", "Qwen2VLForConditionalGeneration", "its own (Qwen2), M-RoPE", video=True,
        grid="merged", tiny=True, tower="qwen",
    ),
    "qwen2_5_vl": Family(
        "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", "its own (Qwen2), M-RoPE",
        video=True, grid="merged", tiny=True, tower="qwen",
    ),
    "qwen3_vl": Family(
        "Qwen3-VL", "Qwen3VLForConditionalGeneration",
        "its own (Qwen3), interleaved M-RoPE; DeepStack: first stage after the injected layers",
        video=True, injected=_DEEPSTACK,
    ),
    "mistral3": Family(
        "Mistral 3 (Small 3.1)", "Mistral3ForConditionalGeneration",
        "Mistral, with and without a sliding window",
    ),
    "gemma3": Family(
        "Gemma 3", "Gemma3ForConditionalGeneration", "refused at attach (see below)",
        refusal=_GEMMA3_REFUSAL,
    ),
}  # fmt: skip
"""Top-level ``config.model_type`` -> family; the visual mask comes from their token ids."""

TEXT_DECODERS: dict[str, str] = {
    "llama": "Llama",
    "qwen2": "Qwen2",
    "mistral": "Mistral",
    "gemma": "Gemma",
    "qwen2_vl_text": "Qwen2-VL text",
    "qwen2_5_vl_text": "Qwen2.5-VL text",
    "qwen3_vl_text": "Qwen3-VL text",
    "gemma3_text": "Gemma 3 text (5 local : 1 global)",
}
"""Decoder ``config.model_type`` values that are tested; others go through the generic path."""

TOKEN_ID_ATTRIBUTES = ("image_token_id", "video_token_id")


def families_with(**facts: object) -> tuple[str, ...]:
    """Names of the families whose :class:`Family` fields equal ``facts``, in table order:
    ``families_with(tiny=True)``, ``families_with(tiny=True, grid="anyres")``."""
    return tuple(
        name
        for name, family in VLM_FAMILIES.items()
        if all(getattr(family, key) == value for key, value in facts.items())
    )


def supported_summary() -> str:
    vlms = ", ".join(family.label for family in VLM_FAMILIES.values() if not family.refusal)
    return (
        f"supported VLMs: {vlms} (text decoders: {', '.join(TEXT_DECODERS.values())}); any "
        "other decoder whose layers take position_embeddings works given an explicit "
        "visual-token mask (handle.set_visual_mask)"
    )


def injected_layers(model: nn.Module) -> int:
    """How many first decoder layers get visual features added after them (0: none)."""
    config = getattr(model, "config", None)
    family = VLM_FAMILIES.get(getattr(config, "model_type", None))
    if family is None or family.injected is None:
        return 0
    value = config
    for part in family.injected.split("."):
        value = getattr(value, part, None)
    return len(value or ())


def check_family(model: nn.Module) -> None:
    """Refuse a family the table marks as refused, with its reason."""
    family = VLM_FAMILIES.get(getattr(getattr(model, "config", None), "model_type", None))
    if family is not None and family.refusal:
        raise TypeError(f"pact does not reduce {family.label}: {family.refusal}")


def models_table() -> str:
    """The docs' supported-models table (markdown), one row per family of the table."""
    rows = ["| family | class | text decoders tested | video |", "| --- | --- | --- | --- |"]
    for family in VLM_FAMILIES.values():
        video = "yes" if family.video else "–"
        rows.append(f"| {family.label} | `{family.model_class}` | {family.decoders} | {video} |")
    return "\n".join(rows)


def check_injection(model: nn.Module, first: int) -> None:
    """Refuse a first stage that reduces the sequence before visual features are injected."""
    count = injected_layers(model)
    if first < count:
        label = VLM_FAMILIES[model.config.model_type].label
        raise ValueError(
            f"stages: layer {first} is too early for {label}, which adds visual features "
            f"to the hidden states of every visual token after decoder layers 0..{count - 1} "
            f"(DeepStack); a reduction there would cut those additions off. Place the first "
            f"stage at layer {count} or later"
        )


def find_decoder(model: nn.Module) -> nn.Module:
    """The text decoder (the module holding ``layers`` and ``rotary_emb``)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    if not isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList):
        raise TypeError(
            f"pact cannot find the decoder layers of {type(model).__name__}: "
            f"model.get_decoder() has no `layers` ModuleList; {supported_summary()}"
        )
    return decoder


def check_layer(layer: nn.Module, index: int) -> None:
    """Fail early (at attach) if a decoder layer lacks what pact relies on."""
    attention = getattr(layer, "self_attn", None)
    missing = [
        name
        for name, owner in (
            ("self_attn", layer),
            ("input_layernorm", layer),
            ("q_proj", attention),
            ("k_proj", attention),
            ("head_dim", attention),
        )
        if owner is None or not hasattr(owner, name)
    ]
    if missing:
        raise TypeError(
            f"decoder layer {index} ({type(layer).__name__}) lacks {', '.join(missing)}; "
            f"{supported_summary()}"
        )
    if any(parameter.device.type == "meta" for parameter in layer.parameters()):
        raise TypeError(
            f"decoder layer {index} has weights on the meta device (offloaded by accelerate); "
            "pact reads a stage layer's projections before its forward, so place the layers "
            "from the first stage on on real devices (device_map without disk/cpu offload)"
        )
    rotary_function(attention)


def sliding_window(attention: nn.Module) -> int | None:
    """The attention window of a layer, wherever its modeling file keeps it.

    Qwen2(-VL) set it per layer on the attention module (None on full-attention layers);
    Mistral has no such attribute and passes its config's window to every layer's
    attention function at call time, so the config is the only place to see it.
    """
    if hasattr(attention, "sliding_window"):
        return attention.sliding_window
    return getattr(getattr(attention, "config", None), "sliding_window", None)


def per_layer_rope(decoder: nn.Module) -> bool:
    """Whether the decoder computes a rotary embedding per layer type (Gemma-3: local and
    global layers use different bases), so each layer's cos/sin must be its own."""
    import inspect

    rotary = getattr(decoder, "rotary_emb", None)
    return rotary is not None and "layer_type" in inspect.signature(rotary.forward).parameters


def rotary_function(attention: nn.Module) -> Callable:
    """The ``apply_rotary_pos_emb(q, k, cos, sin)`` of the attention's modeling file."""
    module = sys.modules.get(type(attention).__module__)
    function = getattr(module, "apply_rotary_pos_emb", None)
    if function is None:
        raise TypeError(
            f"{type(attention).__name__}'s module has no apply_rotary_pos_emb; "
            f"{supported_summary()}"
        )
    return function


def layer_projections(
    layer: nn.Module, hidden: Tensor, position_embeddings: tuple[Tensor, Tensor]
) -> QKSource:
    """Queries and keys of ``layer`` for ``hidden``, before and after RoPE, on demand.

    The same computation the layer's attention performs, read off its own modules.
    """
    attention = layer.self_attn

    def project(rotary: bool) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            normed = layer.input_layernorm(hidden)
            shape = (*hidden.shape[:-1], -1, attention.head_dim)
            queries = attention.q_proj(normed).view(shape)
            keys = attention.k_proj(normed).view(shape)
            if hasattr(attention, "q_norm"):
                queries, keys = attention.q_norm(queries), attention.k_norm(keys)
            queries, keys = queries.transpose(1, 2), keys.transpose(1, 2)
            if rotary:
                cos, sin = position_embeddings
                queries, keys = rotary_function(attention)(queries, keys, cos, sin)
        return queries, keys

    return QKSource(project)


def visual_token_ids(model: nn.Module) -> list[int]:
    """Image and video placeholder ids of a VLM (empty for a text-only model)."""
    config = model.config
    ids = []
    for attribute in TOKEN_ID_ATTRIBUTES:
        value = getattr(config, attribute, None)
        if isinstance(value, int):
            ids.append(value)
    return ids


if __name__ == "__main__":  # the docs build reads the table from here (docs/hooks.py)
    print(models_table())
