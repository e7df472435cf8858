"""The `pact` model's request forms: batched log-likelihoods (fixed and auto batch sizes),
lmms-eval's Collator, the chat form, multi-round dialogues, the pixel budget and the
placement of checkpoints, each against a computation that does not go through the model."""

from __future__ import annotations

import helpers_lmms as rq
import pytest
import torch

import pact
from pact.models.tiny_processor import load_tiny

pytest.importorskip("lmms_eval")

pytestmark = pytest.mark.usefixtures("single_thread")

CONTINUATIONS = [" yes", " no way", "!", " a longer continuation"]


def _loglikelihoods(batch_size, config="pact", **kwargs):
    lm = rq.wrapper(config, batch_size, **kwargs)
    return lm, lm.loglikelihood(rq.requests("loglikelihood", CONTINUATIONS))


def _hf_loss(model, processor, doc, continuation: str) -> float:
    context = rq.direct_inputs(processor, doc)["input_ids"].shape[1]
    full = rq.direct_inputs(processor, doc, continuation)
    labels = full["input_ids"].clone()
    labels[:, :context] = -100  # HF's loss averages over the continuation only
    with torch.no_grad():
        return model(**full, labels=labels).loss.item()


@pytest.mark.parametrize("batch_size", [3, "auto"])
def test_batched_loglikelihood_is_hf_loss_and_equals_one_at_a_time(batch_size):
    processor, model = load_tiny(rq.FAMILY, seed=rq.SEED)
    expected = [
        _hf_loss(model, processor, doc, text)
        for doc, text in zip(rq.DOCS, CONTINUATIONS, strict=True)
    ]
    _, batched = _loglikelihoods(batch_size, "none", max_batch_size=4)
    assert [result[0] for result in batched] == pytest.approx(expected, rel=1e-4)
    # With pact attached: one request at a time, and in batches, agree.
    single_lm, single = _loglikelihoods(1)
    pact_lm, together = _loglikelihoods(batch_size, max_batch_size=4)
    assert [r[0] for r in together] == pytest.approx([r[0] for r in single], rel=1e-4)
    assert [r[1] for r in together] == [r[1] for r in single]
    counts = ("requests", "visual_tokens_seen", "visual_tokens_kept")
    overall = pact_lm.summary()["overall"]
    assert {name: overall[name] for name in counts} == {
        name: single_lm.summary()["overall"][name] for name in counts
    }
    assert overall["visual_tokens_kept"] < overall["visual_tokens_seen"]


def test_collator_batches_honour_batch_size_and_return_request_order(monkeypatch):
    lm = rq.wrapper("pact", batch_size=3)
    sizes = []
    generate = lm.runner.generate

    def recording(handle, texts, images, generation):
        sizes.append(len(texts))
        return generate(handle, texts, images, generation)

    monkeypatch.setattr(lm.runner, "generate", recording)
    # Two generation settings: lmms-eval's Collator keeps them in separate batches.
    kwargs = [rq.GEN_KWARGS, {**rq.GEN_KWARGS, "max_new_tokens": 2}] * 2
    answers = lm.generate_until(rq.requests(second=kwargs))
    assert sorted(sizes) == [2, 2]
    processor, model = load_tiny(rq.FAMILY, seed=rq.SEED)
    with pact.attached(model, "pact"):
        direct = [
            rq.direct_answer(model, processor, doc, kw["max_new_tokens"])[0]
            for doc, kw in zip(rq.DOCS, kwargs, strict=True)
        ]
    assert answers == direct


def test_auto_batch_size_halves_on_out_of_memory(monkeypatch):
    lm = rq.wrapper("none", batch_size="auto", max_batch_size=4)
    assert lm.batch_size == 4 and lm.auto_batch
    score = lm.runner.loglikelihood
    tried = []

    def small_memory(handle, rows):
        tried.append(len(rows))
        if len(rows) > 1:  # what a device that holds one row at a time raises
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return score(handle, rows)

    monkeypatch.setattr(lm.runner, "loglikelihood", small_memory)
    results = lm.loglikelihood(rq.requests("loglikelihood", CONTINUATIONS))
    assert tried[:3] == [4, 2, 1] and lm.batch_size == 1
    _, single = _loglikelihoods(1, "none")
    assert [r[0] for r in results] == pytest.approx([r[0] for r in single], rel=1e-5)
    fixed = rq.wrapper("none", batch_size=2)
    monkeypatch.setattr(fixed.runner, "loglikelihood", small_memory)
    with pytest.raises(torch.OutOfMemoryError):  # a fixed size is the user's to change
        fixed.loglikelihood(rq.requests("loglikelihood", CONTINUATIONS))


def _messages(doc):
    content = [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["question"]}]
    return [{"role": "user", "content": content}]


def _chat_requests(kind="generate_until", doc_to_messages=_messages):
    from lmms_eval.api.instance import Instance

    where = (rq.TASK, rq.SPLIT)
    return [
        Instance(kind, (doc["question"], doc_to_messages, rq.GEN_KWARGS, i, *where), idx=i,
                 metadata={"task": rq.TASK, "doc_id": i, "repeats": 1})
        for i, doc in enumerate(rq.DOCS)
    ]  # fmt: skip


def _chat_wrapper(batch_size=2):
    from pact.eval.chat import PactChatLMM

    lm = PactChatLMM(f"tiny:{rq.FAMILY}", "pact", batch_size=batch_size, device="cpu", seed=rq.SEED)
    lm.task_dict = {rq.TASK: {rq.SPLIT: rq.DOCS}}
    return lm


def test_chat_form_renders_the_tasks_messages():
    lm = _chat_wrapper()
    answers = lm.generate_until(_chat_requests())
    processor, model = load_tiny(rq.FAMILY, seed=rq.SEED)
    with pact.attached(model, "pact"):
        assert answers == [rq.direct_answer(model, processor, doc)[0] for doc in rq.DOCS]
    assert lm.summary()["overall"]["requests"] == len(rq.DOCS)
    with pytest.raises(NotImplementedError, match="--force_simple"):
        lm.loglikelihood([])


def _text_answer(model, processor, text: str) -> str:
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": text}]}],
        add_generation_prompt=True, tokenize=False,
    )  # fmt: skip
    inputs = processor(text=[prompt], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1] :]
    return processor.tokenizer.decode(new, skip_special_tokens=True).strip()


def _follow_up(answer: str) -> str:
    return f"You said {answer!r}. Again?"


def test_multi_round_dialogues_in_both_forms():
    from lmms_eval.api.instance import Instance

    processor, model = load_tiny(rq.FAMILY, seed=rq.SEED)
    with pact.attached(model, "pact"):
        expected = []
        for doc in rq.DOCS:
            first = rq.direct_answer(model, processor, doc)[0]
            expected.append([first, _text_answer(model, processor, _follow_up(first))])

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        # lmms-eval's protocol: (visuals, text, over, answers kept, info) per round.
        if round_idx == 2:
            return None, None, True, previous_output, None
        return None, _follow_up(previous_output[-1]), False, previous_output, None

    def doc_to_messages(doc, round_idx=None, previous_output=None, previous_round_info=None):
        if round_idx is None:
            return _messages(doc)
        _, text, over, kept, info = doc_to_text(doc, previous_output, round_idx)
        turn = None if over else [{"role": "user", "content": [{"type": "text", "text": text}]}]
        return turn, over, kept, info

    simple = rq.wrapper("pact")
    simple_requests = [
        Instance("generate_until_multi_round",
                 (doc["question"], rq.GEN_KWARGS, lambda d: [d["image"]], doc_to_text, i, rq.TASK,
                  rq.SPLIT), idx=i, metadata={"task": rq.TASK, "doc_id": i, "repeats": 1})
        for i, doc in enumerate(rq.DOCS)
    ]  # fmt: skip
    assert simple.generate_until_multi_round(simple_requests) == expected
    chat = _chat_wrapper()
    chat_requests = _chat_requests("generate_until_multi_round", doc_to_messages)
    assert chat.generate_until_multi_round(chat_requests) == expected
    assert chat.summary()["overall"]["requests"] == 2 * len(rq.DOCS)


def test_pixel_budget_sets_the_visual_token_count():
    from pact.eval.pixels import LMMS_EVAL_PIXELS, set_pixels

    processor, model = load_tiny(rq.FAMILY, seed=rq.SEED)
    budget = 16 * 16  # a quarter of the tiny default (64 x 64), in pixels
    lm = rq.wrapper("none", max_pixels=budget, min_pixels=64)
    lm.generate_until(rq.requests())
    processor.image_processor.size = {"shortest_edge": 64, "longest_edge": budget}
    image_id = model.config.image_token_id
    seen = sum(int((rq.direct_inputs(processor, doc)["input_ids"] == image_id).sum())
               for doc in rq.DOCS)  # fmt: skip
    untouched = load_tiny(rq.FAMILY)[0]
    default = sum(int((rq.direct_inputs(untouched, doc)["input_ids"] == image_id).sum())
                  for doc in rq.DOCS)  # fmt: skip
    assert lm.pixels == (64, budget)
    assert lm.summary()["overall"]["visual_tokens_seen"] == seen < default
    # Checkpoints take lmms-eval's budget of their family unless told otherwise.
    for model_type, pixels in LMMS_EVAL_PIXELS.items():
        fresh = load_tiny(rq.FAMILY)[0]
        assert set_pixels(fresh, model_type, None, None, lmms_eval_defaults=True) == pixels
        assert fresh.image_processor.size["longest_edge"] == pixels[1]
    with pytest.raises(ValueError, match=r"min_pixels \(256\) must not exceed max_pixels"):
        rq.wrapper("none", max_pixels=64, min_pixels=256)
    with pytest.raises(ValueError, match="pixel budget of Qwen-VL image processors"):
        rq.wrapper("none", family="llava", max_pixels=4096)


def test_checkpoint_with_device_map_answers_like_the_model_it_was_saved_from(tmp_path, monkeypatch):
    pytest.importorskip("accelerate")  # transformers places layers through it
    from pact.eval.lmms import PactLMM

    processor, model = load_tiny("llava", seed=rq.SEED)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    lm = PactLMM(str(tmp_path), "pact", device="cpu", device_map="auto")
    assert lm.pixels is None  # LLaVA's processor resizes to a fixed size
    assert {parameter.device.type for parameter in lm.model.parameters()} == {"cpu"}
    lm.task_dict = {rq.TASK: {rq.SPLIT: rq.DOCS}}
    with pact.attached(model, "pact"):
        expected = [rq.direct_answer(model, processor, doc)[0] for doc in rq.DOCS]
    assert lm.generate_until(rq.requests()) == expected

    with pytest.raises(ValueError, match="device_map='auto' spreads a checkpoint"):
        rq.wrapper("none", device_map="auto")

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the pixel budget was checked")

    monkeypatch.setattr("pact.eval.lmms.load_model", no_weights)
    with pytest.raises(ValueError, match=r"Image.* resizes to a fixed size"):
        PactLMM(str(tmp_path), "pact", device="cpu", max_pixels=4096)
