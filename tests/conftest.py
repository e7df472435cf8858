"""Fixtures shared by test files that ask for them (none is autouse)."""

from __future__ import annotations

import pytest
import torch

TINY_DECODER = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
"""A text decoder small enough for milliseconds on a CPU; token ids 0 pad, 1 bos, 2 eos."""


@pytest.fixture
def single_thread():
    """One torch thread: tiny tensors gain nothing from threads, and other processes share
    the cores (OpenMP spinning on a busy machine costs several times the work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_decoder_config():
    """``make(kind="qwen2", **changes)``: the transformers config of a :data:`TINY_DECODER`
    of ``kind`` (qwen2, llama, mistral, phi3), ``changes`` replacing its settings."""
    import transformers as hf

    classes = {"qwen2": hf.Qwen2Config, "llama": hf.LlamaConfig,
               "mistral": hf.MistralConfig, "phi3": hf.Phi3Config}  # fmt: skip

    def make(kind: str = "qwen2", **changes):
        return classes[kind](**(TINY_DECODER | changes))

    return make


@pytest.fixture(scope="session")
def trained_shapes(tmp_path_factory):
    """``(folder, record)`` of a model from :data:`SHAPES_TINY_RUN` (its weights mean nothing)."""
    from helpers_shapes import SHAPES_TINY_RUN

    from pact.models.shapes import train

    out = tmp_path_factory.mktemp("trained_shapes")
    threads = torch.get_num_threads()
    try:
        return out, train.main(["--out", str(out), *SHAPES_TINY_RUN])
    finally:
        torch.set_num_threads(threads)
