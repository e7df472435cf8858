"""An attached model used every way a stock one is: caches kept past detach, static caches,
a new attention implementation, deep copies, several threads, and inputs that cannot say
where the visual tokens are. Each either works as the unreduced arithmetic says or fails
with a message, before any model work where the call can be checked up front."""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from helpers_hook import CACHE, ROWS, all_hooks, cache_of, greedy, logits, make_batches, tiny_model
from transformers import StaticCache

import pact
from pact.hooks import handle_of

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def llava():
    tiny = tiny_model("llava", "llama")
    batches = make_batches(tiny, ROWS[:2], "left")
    return tiny, batches, logits(tiny, batches.batch)


@contextmanager
def model_work(tiny) -> Iterator[list[str]]:
    """Names of the parts (vision tower, first decoder layer) that ran while inside."""
    ran: list[str] = []
    parts = {
        "vision tower": tiny.model.model.vision_tower,
        "decoder layer 0": tiny.model.get_decoder().layers[0],
    }
    hooks = [
        module.register_forward_pre_hook(lambda *_, name=name: ran.append(name))
        for name, module in parts.items()
    ]
    try:
        yield ran
    finally:
        for hook in hooks:
            hook.remove()


# ----------------------------------------------------------------- caches and detach
def test_reduced_cache_continued_after_detach_is_refused(llava):
    """The stock model would read the reduced keys without their sizes and positions."""
    tiny, batches, _ = llava
    row = batches.alone[0]
    with pact.attached(tiny.model, "pact") as handle, torch.no_grad():
        out = tiny.model(**row, use_cache=True)
    assert handle.stats.calls == 1
    follow = row["input_ids"][:, -2:]
    sealed = r"pact has been detached.*Start a new cache"
    with pytest.raises(RuntimeError, match=sealed), torch.no_grad():
        tiny.model(input_ids=follow, **{CACHE: cache_of(out)}, use_cache=True)


def test_unreduced_cache_continues_after_detach_as_the_stock_model():
    """A cache in which nothing was reduced (a text-only prompt) stays the model's own; with
    a stage at layer 0, its length answers come back from pact to the cache."""
    tiny = tiny_model("llava", "llama")
    text = make_batches(tiny, [["text:9"]], "left").alone[0]
    follow = torch.tensor([[5, 6]])
    with torch.no_grad():
        stock = tiny.model(**text, use_cache=True)
        expected = tiny.model(input_ids=follow, **{CACHE: cache_of(stock)}, use_cache=True).logits
        with pact.attached(tiny.model, "tome"):
            out = tiny.model(**text, use_cache=True)
        assert "get_seq_length" not in vars(cache_of(out))
        continued = tiny.model(input_ids=follow, **{CACHE: cache_of(out)}, use_cache=True).logits
    torch.testing.assert_close(continued, expected, rtol=0, atol=1e-5)


def test_static_caches_are_refused_before_model_work(llava):
    tiny, batches, reference = llava
    batch = batches.batch
    with pact.attached(tiny.model, "pact"), model_work(tiny) as ran:
        with pytest.raises(ValueError, match=r"DynamicCache only.*cache_implementation='stat"):
            greedy(tiny, batch, cache_implementation="static")
        with pytest.raises(ValueError, match=r"DynamicCache only.*cache_implementation='offl"):
            greedy(tiny, batch, cache_implementation="offloaded")
        cache = StaticCache(config=tiny.model.config, max_cache_len=96)
        with pytest.raises(ValueError, match=r"a StaticCache of StaticLayer"), torch.no_grad():
            tiny.model(**batch, **{CACHE: cache}, use_cache=True)
    assert ran == []
    assert torch.equal(logits(tiny, batch), reference)


# ------------------------------------------------------------ attention implementations
def test_attention_implementation_set_while_attached_is_wrapped(llava):
    """set_attn_implementation swaps the decoder's function: pact wraps the new one, and
    detach leaves the user's choice in place."""
    tiny, batches, _ = llava
    batch = batches.batch
    decoder_config = tiny.model.get_decoder().config
    tiny.model.set_attn_implementation("eager")
    stock_eager = logits(tiny, batch)
    with pact.attached(tiny.model, "pact"):
        reduced_eager = logits(tiny, batch)
    tiny.model.set_attn_implementation("sdpa")
    with pact.attached(tiny.model, "pact"):
        tiny.model.set_attn_implementation("eager")
        switched = logits(tiny, batch)
        assert decoder_config._attn_implementation == "pact_eager"
    assert decoder_config._attn_implementation == "eager"
    torch.testing.assert_close(switched, reduced_eager, rtol=0, atol=1e-6)
    assert torch.equal(logits(tiny, batch), stock_eager)


# ------------------------------------------------------------------------- deep copies
def test_deep_copy_of_an_attached_model_is_independent(llava):
    tiny, batches, reference = llava
    batch = batches.batch
    stock_hooks = all_hooks(tiny.model)  # after a forward (the fixture's): transformers' own
    handle = pact.attach(tiny.model, "pact")
    reduced = logits(tiny, batch)
    clone = copy.deepcopy(tiny.model)
    clone_handle = handle_of(clone)
    assert handle_of(tiny.model) is handle
    assert clone_handle is not None and clone_handle is not handle
    assert clone_handle.model is clone and clone_handle.attached
    copied = dataclasses.replace(tiny, model=clone)
    assert torch.equal(logits(copied, batch), reduced)
    assert clone_handle.stats.calls == 2 and handle.stats.calls == 1  # copied, then its own
    clone_handle.detach()
    assert torch.equal(logits(copied, batch), reference)
    assert all_hooks(clone) == stock_hooks
    assert torch.equal(logits(tiny, batch), reduced)  # the original is still attached
    pact.attach(clone, "tome").detach()
    handle.detach()
    assert handle_of(tiny.model) is None
    assert torch.equal(logits(tiny, batch), reference)


# ----------------------------------------------------------------------------- threads
def test_two_threads_share_one_attached_model(llava):
    """Both threads are inside a forward before either reaches a hooked layer (a barrier
    at layer 0): each call keeps its own state, and each gets its row's own result."""
    tiny, batches, _ = llava
    rows = batches.alone
    with pact.attached(tiny.model, "pact") as handle:
        expected = [logits(tiny, row) for row in rows]
        barrier = threading.Barrier(len(rows), timeout=60)
        layer = tiny.model.get_decoder().layers[0]

        def meet(*_) -> None:
            barrier.wait()

        hook = layer.register_forward_pre_hook(meet)
        results: dict[int, torch.Tensor | BaseException] = {}

        def run(index: int) -> None:
            torch.set_num_threads(1)
            try:
                results[index] = logits(tiny, rows[index])
            except BaseException as error:  # reported by the main thread below
                results[index] = error

        threads = [threading.Thread(target=run, args=(index,)) for index in range(len(rows))]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
        finally:
            hook.remove()
        for index, want in enumerate(expected):
            got = results[index]
            assert not isinstance(got, BaseException), repr(got)
            assert torch.equal(got, want)
        assert handle.stats.calls == 2 * len(rows)


# --------------------------------------------------------------------------- validation
def test_inputs_embeds_without_ids_refused_before_model_work(llava):
    tiny, batches, _ = llava
    batch = batches.batch
    with torch.no_grad():
        embeds = tiny.model.get_input_embeddings()(batch["input_ids"])
    with pact.attached(tiny.model, "pact") as handle, model_work(tiny) as ran:
        with pytest.raises(ValueError, match=r"inputs_embeds \(2, \d+\) and input_ids none"):
            tiny.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
        assert handle._call is None
    assert ran == []


def test_wrong_visual_mask_shape_refused_before_model_work(llava):
    tiny, batches, _ = llava
    batch = batches.batch
    mask = tiny.visual_mask(batch)
    with pact.attached(tiny.model, "pact") as handle, model_work(tiny) as ran:
        handle.set_visual_mask(mask[:1])
        with pytest.raises(ValueError, match=r"set_visual_mask: mask shape \(1, \d+\) does not"):
            logits(tiny, batch)
        assert handle._pending_mask is None
    assert ran == []


@pytest.mark.parametrize(
    ("ids", "error", "message"),
    [
        ("255", TypeError, "must be a list of integer token ids; got str"),
        (255, TypeError, "must be a list of integer token ids; got int"),
        ([255.0], TypeError, "must be integer token ids; got 255.0"),
        ([True], TypeError, "must be integer token ids; got True"),
        (torch.tensor([1.0]), TypeError, "integer token ids; got a torch.float32 tensor"),
        ([-1], ValueError, r"-1 is not a token id of this model \(0..255\)"),
        ([3, 256], ValueError, r"256 is not a token id of this model \(0..255\)"),
    ],
)
def test_bad_visual_token_ids_refused_at_attach(llava, ids, error, message):
    tiny = llava[0]
    with pytest.raises(error, match=message) as caught:
        pact.attach(tiny.model, "pact", visual_token_ids=ids)
    assert str(caught.value).startswith("visual_token_ids")
    assert handle_of(tiny.model) is None
    assert tiny.model.get_decoder().config._attn_implementation == "sdpa"


def test_visual_token_ids_as_a_tensor_equal_the_list(llava):
    tiny, batches, _ = llava
    batch = batches.batch
    with pact.attached(tiny.model, "pact", visual_token_ids=torch.tensor([tiny.image_token_id])):
        from_tensor = logits(tiny, batch)
    with pact.attached(tiny.model, "pact"):
        from_config = logits(tiny, batch)
    assert torch.equal(from_tensor, from_config)
