"""pact's attention wrapper against a direct computation of masked, size-biased attention."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.models.llama import modeling_llama

from pact.hooks.attention import ReducedAttention, make_attention


class FakeAttention(nn.Module):
    """What transformers' attention functions read from an attention module; it poses as
    Llama's so that pact's eager path finds that modeling file's eager function."""

    __module__ = modeling_llama.__name__

    def __init__(self, groups: int, scaling: float):
        super().__init__()
        self.num_key_value_groups, self.scaling, self.is_causal = groups, scaling, True


def reference(query, key, value, valid, log_sizes, scaling):
    """softmax(q k^T * scale + log(size), causal, padding) v, written out in float64."""
    groups = query.shape[1] // key.shape[1]
    key, value = (
        key.repeat_interleave(groups, 1).double(),
        value.repeat_interleave(groups, 1).double(),
    )
    logits = query.double() @ key.transpose(-1, -2) * scaling + log_sizes.double()[:, None, None]
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = torch.arange(kv_len)[None] <= torch.arange(kv_len - q_len, kv_len)[:, None]
    allowed = causal[None, None] & valid[:, None, None, :]
    weights = torch.softmax(logits.masked_fill(~allowed, -math.inf), dim=-1)
    return (weights @ value).transpose(1, 2)  # [B, Q, H, d] like transformers' functions


def random_case(q_len: int, kv_len: int, valid: torch.Tensor, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batch, heads, kv_heads, dim = valid.shape[0], 4, 2, 8
    query = torch.randn(batch, heads, q_len, dim, generator=generator)
    key = torch.randn(batch, kv_heads, kv_len, dim, generator=generator)
    value = torch.randn(batch, kv_heads, kv_len, dim, generator=generator)
    log_sizes = torch.log(torch.randint(1, 6, (batch, kv_len), generator=generator).float())
    return query, key, value, log_sizes


TRAILING = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
LEADING = torch.tensor([[True] * 7, [False] * 2 + [True] * 5])


@pytest.mark.parametrize(
    ("valid", "q_len", "needs_mask"),
    [
        (torch.ones(2, 7, dtype=torch.bool), 7, False),
        (TRAILING, 7, False),  # prefill: causal queries never reach trailing padding
        (TRAILING, 1, True),  # decoding: the new token would see it
        (TRAILING, 3, True),
        (LEADING, 7, True),
    ],
)
@pytest.mark.parametrize("original", ["eager", "sdpa"])
def test_wrapper_matches_direct_attention(valid, q_len, needs_mask, original):
    any_padding = not bool(valid.all())
    trailing = bool((valid[:, 1:] <= valid[:, :-1]).all())
    reduced = ReducedAttention(valid, None, any_padding, trailing)
    assert reduced.needs_mask(q_len, valid.shape[1]) == needs_mask
    query, key, value, log_sizes = random_case(q_len, valid.shape[1], valid)
    reduced.log_sizes = log_sizes
    scaling = 8**-0.5
    module = FakeAttention(groups=2, scaling=scaling)
    attention = make_attention(original)
    output, _ = attention(module, query, key, value, None, pact_attention=reduced, scaling=scaling)
    expected = reference(query, key, value, valid, log_sizes, scaling)
    real_queries = valid[:, valid.shape[1] - q_len :]
    assert torch.allclose(output[real_queries].double(), expected[real_queries], atol=1e-5)


def test_bias_in_extra_head_dimension_is_exact():
    """q'.k' x scale = q.k x scale + log(size), the identity the flash path relies on."""
    valid = torch.ones(1, 5, dtype=torch.bool)
    query, key, value, log_sizes = random_case(5, 5, valid, seed=3)
    scaling = 8**-0.5
    reduced = ReducedAttention(valid, log_sizes, False)
    query2, key2, value2 = reduced.augment(query.clone(), key.clone(), value.clone(), scaling)
    assert query2.shape[-1] % 8 == 0 and torch.all(value2[..., 8:] == 0)
    biased = query2 @ key2.repeat_interleave(2, 1).transpose(-1, -2) * scaling
    plain = (
        query @ key.repeat_interleave(2, 1).transpose(-1, -2) * scaling + log_sizes[:, None, None]
    )
    assert torch.allclose(biased, plain, atol=1e-5)
