"""Shared helpers for the hook tests: tiny VLMs, batches with each row also built alone,
forward / generate wrappers, and probes that read what a decoder layer is handed.

Rows are built once with one generator and then collated twice (as a batch, and one by
one), so a row's token ids and pixels are identical in both; any difference between the
two runs is the hook's (or the model's batching, which the unreduced model bounds).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import LlamaModel

from pact.models import tiny_inputs as ti
from pact.models.tiny import FAMILIES, FAMILY_TEXTS, TinyVLM, build, text_decoders

QWEN_VL = ti.QWEN_FAMILIES
FAMILY_TEXT = list(FAMILY_TEXTS)
"""The full family x text-decoder matrix (Qwen-VL models have their own decoder)."""
REPRESENTATIVE = [
    (family, text_decoders(family)[(index + 1) % len(text_decoders(family))])
    for index, family in enumerate(FAMILIES)
]
"""Every family once, every text decoder at least once: for the more expensive checks
(llava with llama, llava_next with mistral, llava_onevision with gemma, Qwen-VL with qwen2)."""
TOL = 1e-4
"""float32 tolerance for 'the same computation in another batch shape'."""
ROWS = [
    ["text:3", "image", "text:4"],
    ["text:2", "image", "image", "text:5"],
    ["text:6"],
]
"""One image, two images, no image: different visual counts, lengths and kept counts."""


@dataclass
class Batches:
    """A padded batch and, for each row, the same row alone (unpadded)."""

    batch: dict[str, Tensor]
    alone: list[dict[str, Tensor]]
    padding_side: str

    @property
    def real(self) -> Tensor:
        """``[B, N]`` bool: real (non-padding) tokens of the batch."""
        return self.batch["attention_mask"].bool()


def make_batches(
    tiny: TinyVLM, prompts: list[list[str]], padding_side: str = "left", seed: int = 0
) -> Batches:
    """``tiny.inputs(prompts)`` plus each row collated on its own."""
    layout = tiny.layout
    generator = torch.Generator().manual_seed(seed)
    rows = [ti.build_row(layout, list(spec), generator) for spec in prompts]

    def collate(subset: list[ti.Row]) -> dict[str, Tensor]:
        batch = ti.pad_rows(layout, subset, padding_side)
        batch.update(ti.vision_tensors(layout, subset))
        return {name: tensor.to(tiny.model.device) for name, tensor in batch.items()}

    return Batches(collate(rows), [collate([row]) for row in rows], padding_side)


def model_inputs(tiny: TinyVLM, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """``batch`` plus, for left-padded llava-style batches, the position ids that
    ``generate`` would compute (Qwen-VL computes its 3-D positions from the mask itself)."""
    inputs = dict(batch)
    mask = batch["attention_mask"]
    if tiny.family not in QWEN_VL and not bool(mask.all()):
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return inputs


def logits(tiny: TinyVLM, batch: dict[str, Tensor], **kwargs) -> Tensor:
    with torch.no_grad():
        return tiny.model(**model_inputs(tiny, batch), **kwargs).logits


def greedy(tiny: TinyVLM, batch: dict[str, Tensor], new_tokens: int = 4, **kwargs) -> Any:
    """Greedy cached generate; returns the generate output dict (sequences, logits, cache)."""
    with torch.no_grad():
        return tiny.model.generate(
            **batch,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
            **kwargs,
        )


def max_row_diff(batched: Tensor, real: Tensor, alone: list[Tensor]) -> float:
    """Largest difference between each row's logits at its real positions and the row alone."""
    worst = 0.0
    for row, single in enumerate(alone):
        mine = batched[row][real[row]]
        assert mine.shape == single[0].shape
        worst = max(worst, (mine - single[0]).abs().max().item())
    return worst


def tiny_model(family: str, text: str = "qwen2", **kwargs) -> TinyVLM:
    return build(family, text=text, **kwargs)


def all_hooks(model: nn.Module) -> int:
    """Hooks of every kind registered on any submodule (0 on a stock model)."""
    total = 0
    for module in model.modules():
        for name in (
            "_forward_pre_hooks",
            "_forward_hooks",
            "_forward_hooks_always_called",
            "_forward_pre_hooks_with_kwargs",
            "_forward_hooks_with_kwargs",
        ):
            total += len(getattr(module, name, {}))
    return total


@contextmanager
def layer_probe(model: nn.Module, index: int) -> Iterator[list[dict[str, Any]]]:
    """Record the kwargs that decoder layer ``index`` receives (after pact's own pre-hook,
    which was registered earlier and so runs first)."""
    seen: list[dict[str, Any]] = []

    def hook(module, args, kwargs):
        seen.append(dict(kwargs))

    layer = model.get_decoder().layers[index]
    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def rope_probe(model: nn.Module) -> Iterator[list[Tensor]]:
    """Record the position ids the decoder's rotary embedding is called with."""
    seen: list[Tensor] = []

    def hook(module, args, kwargs):
        positions = args[1] if len(args) > 1 else kwargs["position_ids"]
        seen.append(positions.detach().clone())

    handle = model.get_decoder().rotary_emb.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


CACHE = (
    "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
)
"""The name of a forward's KV cache argument and output (``past_key_values`` before
transformers renamed it to ``cache``): ``model(**{CACHE: cache})``."""


def cache_of(output: Any) -> Any:
    """The KV cache a forward or ``generate`` returned, under either name."""
    cache = getattr(output, "cache", None)
    return output.past_key_values if cache is None else cache


def cache_lengths(cache: Any) -> list[int]:
    return [layer.get_seq_length() for layer in cache.layers]
