"""Attention for reduced layers: masks of the reduced length and proportional attention.

pact registers one attention function per stock implementation (``pact_eager``,
``pact_sdpa``, ``pact_flash_attention_2``, ...) in transformers' ``AttentionInterface``, and
the matching mask function in ``AttentionMaskInterface``. The text model of a hooked VLM
runs ``pact_<original>``: layers that pact did not touch get the original function and mask
unchanged; reduced layers receive a :class:`ReducedAttention` through the layer's kwargs
(so two hooked models never share state) and attend over the reduced keys with
``+ log(size)`` on their logits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from pact.hooks.families import sliding_window

PREFIX = "pact_"
KWARG = "pact_attention"
# Flash kernels want head dims that are multiples of 8: the bias rides in one extra
# dimension, padded with zeros to the next multiple.
_HEAD_PAD = 8


@dataclass
class ReducedAttention:
    """What a reduced layer's attention needs beyond q, k, v (one per layer call)."""

    key_valid: Tensor
    """``[B, KV]`` bool: True at real keys of this layer's (reduced) cache."""
    log_sizes: Tensor | None
    """``[B, KV]`` float32 ``log(size)`` of each key; None: proportional attention off."""
    any_padding: bool
    """Whether any key is invalid (decided once per call, not per layer, to avoid syncs)."""
    trailing_padding_only: bool = False
    """Whether every row's invalid keys come after all its valid ones (rows padded at the
    end, as reduction pads them)."""
    key_positions: Tensor | None = None
    """``[B, KV]`` each key's index in the unreduced cache; None: no layer has a window."""
    query_positions: Tensor | None = None
    """``[B, Q]`` the same for this call's queries."""
    span: int = 0
    """Largest query index minus smallest key index: a window wider masks nothing."""

    def window_matters(self, window: int | None) -> bool:
        """Whether a sliding window of ``window`` tokens hides some key from some query."""
        return window is not None and self.key_positions is not None and self.span >= window

    def needs_mask(self, q_len: int, kv_len: int) -> bool:
        """Whether a plain causal kernel, given no mask, could let a real query see padding.

        Padding that trails every row sits after each real query of a full-length call, so
        causality already hides it; the (finite, unused) outputs at padded slots may differ.
        """
        return self.any_padding and not (self.trailing_padding_only and q_len == kv_len)

    def additive_mask(self, query: Tensor, window: int | None = None) -> Tensor:
        """``[B, 1, Q, KV]`` causal + padding mask with the log-size bias, query dtype.

        ``window``: a sliding window, measured in original positions (a query at index
        ``q`` of the unreduced sequence sees keys at ``q - window < k <= q``), so that a
        layer sees the same original tokens as in the unreduced model, minus removed ones.
        """
        q_len, kv_len = query.shape[2], self.key_valid.shape[1]
        device = query.device
        query_index = torch.arange(kv_len - q_len, kv_len, device=device)
        causal = torch.arange(kv_len, device=device)[None, :] <= query_index[:, None]
        allowed = causal[None] & self.key_valid.to(device)[:, None, :]
        if self.window_matters(window):
            assert self.key_positions is not None and self.query_positions is not None
            keys, queries = self.key_positions.to(device), self.query_positions.to(device)
            allowed = allowed & (keys[:, None, :] > queries[:, :, None] - window)
        # finfo.min, not -inf: rows of padding queries must stay finite (their values feed
        # the next layer's keys and values, and NaN there would poison every row).
        bias = torch.zeros(allowed.shape, dtype=torch.float32, device=device)
        if self.log_sizes is not None:
            bias = bias + self.log_sizes.to(device)[:, None, :]
        bias = bias.masked_fill(~allowed, torch.finfo(torch.float32).min)
        return bias[:, None].to(query.dtype).clamp(min=torch.finfo(query.dtype).min)

    def augment(self, query: Tensor, key: Tensor, value: Tensor, scaling: float):
        """Bias in an extra head dimension: ``q' = [q, 1]``, ``k' = [k, log(size)/scale]``.

        ``q' . k' * scale = q . k * scale + log(size)`` exactly, so kernels that take no bias
        (flash) still compute proportional attention. ``v' = [v, 0]``; slice the output.
        """
        assert self.log_sizes is not None
        pad = lambda t: nn.functional.pad(t, (0, _HEAD_PAD))  # noqa: E731
        query, key, value = pad(query), pad(key), pad(value)
        query[..., -_HEAD_PAD] = 1.0
        key[..., -_HEAD_PAD] = (self.log_sizes.to(key.device) / scaling)[:, None, :].to(key.dtype)
        return query, key, value


def _original_function(name: str, module: nn.Module) -> Callable:
    """The stock attention ``name`` for this module (eager: its own modeling file's)."""
    if name == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    return AttentionInterface._global_mapping[name]


class _OriginalConfigView(nn.Module):
    """Proxy that shows a module with its original attention name (flash dispatches on it)."""

    def __init__(self, module: nn.Module, name: str):
        super().__init__()
        object.__setattr__(self, "_wrapped", module)
        object.__setattr__(self, "_config", _ConfigView(module.config, name))

    def __getattr__(self, attribute: str) -> Any:
        if attribute == "config":
            return object.__getattribute__(self, "_config")
        return getattr(object.__getattribute__(self, "_wrapped"), attribute)


class _ConfigView:
    def __init__(self, config: Any, name: str):
        self._config, self._attn_implementation = config, name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._config, attribute)


def make_attention(original: str) -> Callable:
    """The ``pact_<original>`` attention function."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        reduced: ReducedAttention | None = kwargs.pop(KWARG, None)
        base = _original_function(original, module)
        if reduced is None:
            return base(module, query, key, value, attention_mask, **kwargs)
        scaling = kwargs.pop("scaling", None)
        scaling = module.scaling if scaling is None else scaling
        if "flash" in original:
            return _flash(base, original, reduced, module, query, key, value, scaling, kwargs)
        q_len, kv_len = query.shape[2], key.shape[2]
        window = sliding_window(module)
        plain = not reduced.needs_mask(q_len, kv_len) and not reduced.window_matters(window)
        if original == "sdpa" and q_len in (1, kv_len) and plain:
            return _sdpa_fast(base, reduced, module, query, key, value, scaling, kwargs)
        mask = reduced.additive_mask(query, window)
        return base(module, query, key, value, mask, scaling=scaling, **kwargs)

    attention.__name__ = f"{PREFIX}{original}"
    return attention


def _sdpa_fast(base, reduced, module, query, key, value, scaling, kwargs):
    """No visible padding and plain causal structure: no mask, so torch may pick a fused
    (flash) kernel."""
    if reduced.log_sizes is None:
        return base(module, query, key, value, None, scaling=scaling, **kwargs)
    head_dim = query.shape[-1]
    query, key, value = reduced.augment(query, key, value, scaling)
    output, weights = base(module, query, key, value, None, scaling=scaling, **kwargs)
    return output[..., :head_dim], weights


def _flash(base, original, reduced, module, query, key, value, scaling, kwargs):
    head_dim = query.shape[-1]
    if reduced.log_sizes is not None:
        query, key, value = reduced.augment(query, key, value, scaling)
    needs_mask = reduced.needs_mask(query.shape[2], key.shape[2])
    mask = reduced.key_valid.to(query.device) if needs_mask else None
    view = _OriginalConfigView(module, original)
    output, weights = base(view, query, key, value, mask, scaling=scaling, **kwargs)
    return output[..., :head_dim], weights


def pact_name(original: str) -> str:
    """Register (once) and return the pact wrapper's name for a stock implementation."""
    if original.startswith(PREFIX):
        raise ValueError(f"this model already runs pact's attention ({original!r}); detach first")
    wrappable = original in ("eager", "sdpa") or (
        original.startswith("flash_attention_") and original in AttentionInterface._global_mapping
    )
    if not wrappable:
        raise ValueError(
            f"pact cannot wrap attention implementation {original!r}; load the model with "
            "attn_implementation 'eager', 'sdpa' or 'flash_attention_2'"
        )
    name = f"{PREFIX}{original}"
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, make_attention(original))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    return name
