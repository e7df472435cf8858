"""Prefill speed and KV-cache size of a reduced model against the unreduced one.

The *ideal* speedup is what the token counts alone promise: the unreduced prefill runs
``n_layers x N`` token-layers, the reduced one ``L x N + (n_layers - L) x M`` (for each
stage in turn). The achieved speedup is measured; their ratio says how much the reduction's
own cost and the untouched parts (vision tower, embeddings, masks) eat into it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import DynamicCache

from pact.config import PactConfig
from pact.hooks import attached


@dataclass
class PrefillReport:
    """Figures of one configuration against ``none`` on the same model and batch."""

    config: str
    tokens: int
    """Sequence length (padded) of the batch."""
    visual_in: int
    visual_out: int
    none_seconds: float
    reduced_seconds: float
    ideal_speedup: float
    achieved_speedup: float
    kv_bytes_none: int
    kv_bytes_reduced: int
    kv_bytes_expected: int
    reduction_seconds: float

    @property
    def fraction_of_ideal(self) -> float:
        return self.achieved_speedup / self.ideal_speedup

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"fraction_of_ideal": self.fraction_of_ideal}


def run_prefill(model, batch: dict) -> DynamicCache:
    """One prefill of ``batch`` (no gradients, logits of the last position only); its cache."""
    cache = DynamicCache(config=model.config.get_text_config())
    with torch.no_grad():
        model(**batch, cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def _timed_prefill(model, batch: dict) -> float:
    start = time.perf_counter()
    run_prefill(model, batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_prefill_seconds(model, batch: dict, config: PactConfig, repeats: int):
    """Median prefill seconds without and with ``config``, runs alternating.

    Alternating (after one warm-up of each) spreads drifts of machine load evenly over
    both, which back-to-back blocks of runs would not.
    """
    plain, reduced = [], []
    for repeat in range(repeats + 1):
        plain_time = _timed_prefill(model, batch)
        with attached(model, config):
            reduced_time = _timed_prefill(model, batch)
        if repeat:  # the first round is the warm-up
            plain.append(plain_time)
            reduced.append(reduced_time)
    return statistics.median(plain), statistics.median(reduced)


def kv_bytes(cache: DynamicCache) -> int:
    """Bytes of every key and value tensor the cache holds."""
    return sum(
        tensor.numel() * tensor.element_size()
        for layer in cache.layers
        for tensor in (layer.keys, layer.values)
        if tensor is not None
    )


def layer_lengths(n_layers: int, tokens: int, config: PactConfig, stages: list) -> list[int]:
    """Sequence length each layer runs on, from the stats: rows shrink by what each stage
    removed and are padded to the longest row."""
    row_lengths = [tokens] * len(stages[0].visual_in) if stages else [tokens]
    lengths, current = [], tokens
    stage_at = {stage.layer: stats for stage, stats in zip(config.stages, stages, strict=True)}
    for layer in range(n_layers):
        if layer in stage_at:
            stats = stage_at[layer]
            row_lengths = [
                length - visual_in + kept
                for length, visual_in, kept in zip(
                    row_lengths, stats.visual_in, stats.after_merge, strict=True
                )
            ]
            current = max(row_lengths)
        lengths.append(current)
    return lengths


def cache_lengths(cache: DynamicCache) -> list[int]:
    return [layer.get_seq_length() for layer in cache.layers]


def measure_prefill(model, batch: dict, config: PactConfig, repeats: int = 5) -> PrefillReport:
    """``config`` against ``none``: median prefill seconds, ideal vs achieved, KV bytes."""
    decoder = model.get_decoder()
    n_layers = len(decoder.layers)
    none_seconds, reduced_seconds = interleaved_prefill_seconds(model, batch, config, repeats)
    none_cache = run_prefill(model, batch)
    with attached(model, config) as handle:
        reduced_cache = run_prefill(model, batch)
        stages = handle.stats.last
        reduction_seconds = handle.stats.seconds.total
    tokens = batch["input_ids"].shape[1]
    expected = layer_lengths(n_layers, tokens, config, stages)
    if cache_lengths(reduced_cache) != expected:
        raise AssertionError(
            f"KV cache lengths {cache_lengths(reduced_cache)} differ from the token counts "
            f"the reduction reports {expected}"
        )
    bytes_per_token = kv_bytes(none_cache) // (n_layers * tokens)
    return PrefillReport(
        config=str(config),
        tokens=tokens,
        visual_in=sum(stages[0].visual_in) if stages else 0,
        visual_out=sum(stages[-1].after_merge) if stages else 0,
        none_seconds=none_seconds,
        reduced_seconds=reduced_seconds,
        ideal_speedup=n_layers * tokens / sum(expected),
        achieved_speedup=none_seconds / reduced_seconds,
        kv_bytes_none=kv_bytes(none_cache),
        kv_bytes_reduced=kv_bytes(reduced_cache),
        kv_bytes_expected=bytes_per_token * sum(expected),
        reduction_seconds=reduction_seconds,
    )
