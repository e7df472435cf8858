"""Does pact keep the flash kernel? Per-layer dispatch, kernel names, and two invariants.

* :class:`DispatchRecorder` wraps the stock attention function (``sdpa`` or
  ``flash_attention_2``) that pact's wrapper calls, and records per decoder layer what it
  was handed: head dim (``+8`` when proportional attention rides in an extra dimension),
  whether a mask came along (a mask keeps torch's sdpa off its flash kernel).
* :func:`flash_only` re-runs a forward with torch's sdpa restricted to its flash backend:
  it fails if any attention call of that forward cannot run on the flash kernel.
* :func:`duplicates_invariant`: ``m`` identical tokens merged into one of size ``m`` attend
  like the ``m`` copies, in bf16, through the flash path.
* :func:`rows_vs_alone`: each row of a padded batch gives the logits it gives alone.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor
from transformers import AttentionInterface

import pact
from pact.bench.gpu.gpu_timing import device_activity
from pact.config import PactConfig
from pact.models import tiny_inputs as ti
from pact.models.tiny import TinyVLM, build

BF16_TOLERANCE = 1e-2
"""bf16 keeps 8 significant bits: the bias ``log(m) / scale`` rides in the keys within
~0.02 and merged and unmerged runs round ``q.k`` and the softmax sums differently; on the
tiny model's logits that is ~2e-3 (see tests/test_hook_exactness.py). The invariant also
requires the bias's own effect (proportional attention off) to be 4x the error."""
ATTENTION_MARKERS = ("flash", "fmha", "attention", "attn", "sdpa", "cudnn")
COPIES, VECTORS = 3, 4


class DispatchRecorder:
    """Context manager recording each call of the stock attention function ``name``."""

    def __init__(self, model, name: str):
        decoder = model.get_decoder()
        self.layer_of = {id(layer.self_attn): i for i, layer in enumerate(decoder.layers)}
        self.name = name
        self.calls: list[dict[str, Any]] = []

    def __enter__(self) -> DispatchRecorder:
        mapping = AttentionInterface._global_mapping
        self._original = original = mapping[self.name]

        def recorded(module, query, key, value, attention_mask, **kwargs):
            self.calls.append(
                {
                    "layer": self.layer_of.get(id(getattr(module, "_wrapped", module)), "other"),
                    "batch": query.shape[0],
                    "q_len": query.shape[2],
                    "kv_len": key.shape[2],
                    "head_dim": query.shape[-1],
                    "mask": attention_mask is not None,
                }
            )
            return original(module, query, key, value, attention_mask, **kwargs)

        mapping[self.name] = recorded
        return self

    def __exit__(self, *exc_info) -> None:
        AttentionInterface._global_mapping[self.name] = self._original

    def per_layer(self) -> list[dict[str, Any]]:
        """One entry per decoder layer: calls, head dims seen, calls that carried a mask."""
        table: dict[Any, dict[str, Any]] = defaultdict(
            lambda: {"calls": 0, "head_dims": set(), "masked_calls": 0, "q_lens": set()}
        )
        for call in self.calls:
            entry = table[call["layer"]]
            entry["calls"] += 1
            entry["head_dims"].add(call["head_dim"])
            entry["q_lens"].add(call["q_len"])
            entry["masked_calls"] += call["mask"]
        layers = sorted((k for k in table if k != "other"), key=int)
        return [
            {
                "layer": layer,
                "calls": table[layer]["calls"],
                "head_dims": sorted(table[layer]["head_dims"]),
                "q_lens": sorted(table[layer]["q_lens"]),
                "masked_calls": table[layer]["masked_calls"],
            }
            for layer in layers
        ]


def attention_kernels(kernels: dict[str, int]) -> dict[str, int]:
    """The kernels whose names look like attention kernels."""
    return {
        name: count
        for name, count in kernels.items()
        if any(marker in name.lower() for marker in ATTENTION_MARKERS)
    }


def flash_only(run, implementation: str) -> str:
    """``"ok"`` if ``run()`` works with torch's sdpa restricted to its flash backend, else why.

    Only meaningful for ``sdpa``; ``flash_attention_2`` has no other kernel to fall back on.
    """
    if implementation != "sdpa":
        return f"not applicable ({implementation} calls flash_attn directly)"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            run()
    except RuntimeError as error:
        return f"failed: {str(error).splitlines()[0][:300]}"
    return "ok"


def dispatch_report(tiny: TinyVLM, batch: dict, config: PactConfig, implementation: str) -> dict:
    """Per-layer dispatch, attention kernels and the flash-only check of one prefill and one
    decoding step of ``config`` on ``batch``."""
    model = tiny.model
    head_dim = model.get_decoder().layers[0].self_attn.head_dim

    def prefill():
        with torch.no_grad():
            model(**batch, use_cache=True, logits_to_keep=1)

    with pact.attached(model, config) as handle:
        with DispatchRecorder(model, implementation) as recorder, torch.no_grad():
            model.generate(**batch, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        first = handle.config.stages[0].layer if handle.config.stages else len(recorder.layer_of)
        activity = device_activity(prefill, batch["input_ids"].device)
        forced = flash_only(prefill, implementation)
    layers = recorder.per_layer()
    kernels = {} if activity is None else activity.get("kernels", {})
    reduced = [entry for entry in layers if entry["layer"] >= first]
    return {
        "implementation": implementation,
        "batch": int(batch["input_ids"].shape[0]),
        "model_head_dim": head_dim,
        "first_reduced_layer": first,
        "layers": layers,
        "reduced_layers_with_extra_dim": sum(head_dim + 8 in e["head_dims"] for e in reduced),
        "reduced_layers": len(reduced),
        "masked_calls_in_reduced_layers": sum(e["masked_calls"] for e in reduced),
        "attention_kernels": None if activity is None else attention_kernels(kernels),
        "profiler_error": None if activity is None else activity.get("error"),
        "flash_only_prefill": forced,
    }


# ------------------------------------------------------------------ duplicates invariant
def copies_inputs(tiny: TinyVLM, copies: int, seed: int = 0):
    """Embeddings ``[text x3, VECTORS distinct visual, copies x one visual vector, text x3]``,
    positions and visual mask. The copies share one position id, so they have identical keys
    and values: merged into one token of size ``copies``, proportional attention must
    reproduce them exactly (also used by tests/test_hook_exactness.py)."""
    embed = tiny.model.get_input_embeddings()
    device, dtype = embed.weight.device, embed.weight.dtype
    generator = torch.Generator().manual_seed(seed)
    dim = embed.weight.shape[1]
    distinct = torch.randn(1, VECTORS, dim, generator=generator)
    copy = torch.randn(1, 1, dim, generator=generator).expand(1, copies, dim)
    with torch.no_grad():
        text = embed(torch.tensor([[5, 6, 7, 8, 9, 10]], device=device))
    visual_part = torch.cat([distinct, copy], dim=1).to(device, dtype)
    embeds = torch.cat([text[:, :3], visual_part, text[:, 3:]], dim=1)
    start = 3 + VECTORS
    positions = torch.cat(
        [torch.arange(start), torch.full((copies,), start), torch.arange(start + 1, start + 4)]
    )[None].to(device)
    visual = torch.zeros(1, embeds.shape[1], dtype=torch.bool, device=device)
    visual[0, 3 : start + copies] = True
    return embeds, positions, visual


def _left_pad(tensor: Tensor, width: int) -> Tensor:
    """``[1, N, ...]`` zero-padded on the left to ``[1, width, ...]``."""
    pad = tensor.new_zeros((1, width - tensor.shape[1], *tensor.shape[2:]))
    return torch.cat([pad, tensor], dim=1)


def _padded_pair(tiny: TinyVLM, embeds: Tensor, positions: Tensor, visual: Tensor) -> dict:
    """The row left-padded under a longer text-only second row (the masked path)."""
    other, other_positions, _ = copies_inputs(tiny, COPIES + 5, seed=1)
    width = other.shape[1]
    mask = torch.ones(2, width, dtype=torch.long, device=embeds.device)
    mask[0, : width - embeds.shape[1]] = 0
    no_visual = torch.zeros(1, width, dtype=torch.bool, device=embeds.device)
    return {
        "inputs_embeds": torch.cat([_left_pad(embeds, width), other]),
        "position_ids": torch.cat([_left_pad(positions, width), other_positions]),
        "attention_mask": mask,
        "visual": torch.cat([_left_pad(visual, width), no_visual]),
    }


def _merged_vs_copies(tiny: TinyVLM, reference: TinyVLM, proportional: bool, padded: bool):
    """Largest next-token logit difference: merged (hooked ``tiny``) vs copies (``reference``)."""
    embeds, positions, visual = copies_inputs(tiny, COPIES)
    with torch.no_grad():
        expected = reference.model(inputs_embeds=embeds, position_ids=positions).logits[0, -1]
    kwargs = {"inputs_embeds": embeds, "position_ids": positions}
    if padded:
        kwargs = _padded_pair(tiny, embeds, positions, visual)
        visual = kwargs.pop("visual")
    stage = {"layer": 0, "clusterer": {"name": "dbdpc", "cutoff": 1e-4}}
    stage["proportional_attention"] = proportional
    with pact.attached(tiny.model, {"stages": [stage]}) as handle:
        handle.set_visual_mask(visual)
        with torch.no_grad():
            out = tiny.model(**kwargs).logits[0, -1]
        merged = handle.stats.last[0].after_merge[0] == VECTORS + 1
    return (out.float() - expected.float()).abs().max().item(), merged


def duplicates_invariant(implementation: str, device, dtype=torch.bfloat16) -> dict:
    """Merged duplicates vs the copies, padded and not, with and without proportional
    attention. Under ``flash_attention_2`` the copies run through an sdpa twin (same seed,
    same weights): flash reads non-increasing position ids of one row as packed sequences."""
    options = dict(text="qwen2", layers=1, dtype=dtype, device=device)
    tiny = build("llava", attn=implementation, **options)
    reference = build("llava", attn="sdpa", **options) if "flash" in implementation else tiny
    results = {}
    for padded in (False, True):
        with_bias, merged = _merged_vs_copies(tiny, reference, True, padded)
        without, _ = _merged_vs_copies(tiny, reference, False, padded)
        results["padded" if padded else "unpadded"] = {
            "max_abs_diff": with_bias,
            "max_abs_diff_without_bias": without,
            "copies_merged": merged,
            "holds": merged and with_bias <= BF16_TOLERANCE and without > 4 * with_bias,
        }
    if implementation == "sdpa" and torch.device(device).type == "cuda":
        forced = flash_only(lambda: _merged_vs_copies(tiny, reference, True, False), "sdpa")
        results["unpadded"]["flash_only"] = forced
    results["tolerance"] = BF16_TOLERANCE
    return results


# ------------------------------------------------------------------ rows vs alone
BATCH_ROWS = (["text:3", "image", "text:4"], ["text:2", "image", "image", "text:5"], ["text:6"])


def _logits(tiny: TinyVLM, batch: dict) -> Tensor:
    inputs = dict(batch)
    mask = batch["attention_mask"]
    if tiny.family not in ti.QWEN_FAMILIES and not bool(mask.all()):
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return tiny.model(**inputs).logits.float()


def rows_vs_alone(implementation: str, device, dtype=torch.bfloat16, preset: str = "pact") -> dict:
    """Largest logit difference between each row of a left-padded batch and the row alone,
    for ``none`` and the preset named ``preset`` (the unreduced model's difference bounds
    kernel effects); the result holds one entry per preset name."""
    tiny = build("llava_onevision", text="qwen2", attn=implementation, dtype=dtype, device=device)
    generator = torch.Generator().manual_seed(0)
    rows = [ti.build_row(tiny.layout, list(spec), generator) for spec in BATCH_ROWS]

    def collate(subset):
        batch = ti.pad_rows(tiny.layout, subset, "left")
        batch.update(ti.vision_tensors(tiny.layout, subset))
        return {name: tensor.to(device) for name, tensor in batch.items()}

    batch, alone = collate(rows), [collate([row]) for row in rows]
    real = batch["attention_mask"].bool()
    result = {}
    for name in ("none", preset):
        with pact.attached(tiny.model, name) as handle:
            batched = _logits(tiny, batch)
            counts = list(handle.stats.last[-1].after_merge) if handle.stats.last else []
            singles = [_logits(tiny, row) for row in alone]
        worst = max(
            (batched[r][real[r]] - single[0]).abs().max().item() for r, single in enumerate(singles)
        )
        result[name] = {"max_abs_diff": worst, "kept_visual_per_row": counts}
    result["logit_scale"] = batched[real].abs().max().item()
    return result
