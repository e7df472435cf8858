"""The lmms-eval model `pact`, driven with lmms-eval Instances built here on tiny models.

Every figure the wrapper reports is checked against a computation that does not go through
it: the processor and `model.generate` called directly, a fresh handle's stats, HF's own
loss for log-likelihoods.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers_lmms import (
    DOCS,
    FAMILY,
    SEED,
    SPLIT,
    TASK,
    direct_answer,
    direct_inputs,
    requests,
    wrapper,
)

import pact
from pact.eval.runner import Generation, TaskTotals
from pact.models.tiny import FAMILIES
from pact.models.tiny_processor import load_tiny

pytest.importorskip("lmms_eval")

pytestmark = pytest.mark.usefixtures("single_thread")


def test_config_none_answers_equal_plain_generate():
    lm = wrapper("none")
    answers = lm.generate_until(requests())
    processor, model = load_tiny(FAMILY, seed=SEED)
    expected = [direct_answer(model, processor, doc)[0] for doc in DOCS]
    assert answers == expected
    assert len(set(answers)) > 1  # the check would be empty if every answer were the same
    overall = lm.summary()["overall"]
    seen = sum(
        int((direct_inputs(processor, d)["input_ids"] == model.config.image_token_id).sum())
        for d in DOCS
    )
    assert overall["visual_tokens_seen"] == overall["visual_tokens_kept"] == seen
    assert overall["reduction_ratio"] == 0.0 and overall["requests"] == 4


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_pact_ratio_matches_fresh_handles_and_batches_agree(family):
    processor, model = load_tiny(family, seed=SEED)
    expected, visual_in, visual_out, placeholders, flops = [], 0, 0, 0, [0, 0]
    for doc in DOCS:  # one fresh handle per document, no batching
        inputs = direct_inputs(processor, doc)
        placeholders += int((inputs["input_ids"] == model.config.image_token_id).sum())
        with pact.attached(model, "pact") as handle:
            expected.append(direct_answer(model, processor, doc)[0])
            visual_in += handle.stats.visual_in
            visual_out += handle.stats.visual_out
            flops[0] += handle.stats.prefill_flops
            flops[1] += handle.stats.prefill_flops_unreduced
    assert 0 < flops[0] < flops[1]  # the stats' own FLOPs, request by request
    assert placeholders == visual_in and 0 < visual_out < visual_in
    for batch_size in (1, 2):
        lm = wrapper("pact", batch_size, family)
        assert lm.generate_until(requests()) == expected, f"batch size {batch_size}"
        overall = lm.summary()["overall"]
        assert (overall["visual_tokens_seen"], overall["visual_tokens_kept"]) == (
            visual_in,
            visual_out,
        )
        assert overall["reduction_ratio"] == round(1 - visual_out / visual_in, 4)
        assert overall["prefill_s_per_request"] > 0 and overall["generation_s_per_request"] > 0
        assert (overall["prefill_tflops"], overall["prefill_tflops_unreduced"]) == (
            flops[0] / 1e12,
            flops[1] / 1e12,
        )
        assert lm.summary()["tasks"][TASK] == overall


def test_model_is_left_unreduced_after_the_requests():
    lm = wrapper("pact", batch_size=2)
    lm.generate_until(requests())
    lm.loglikelihood(requests("loglikelihood", " yes"))
    assert getattr(lm.model, "_pact_handle", None) is None
    _, untouched = load_tiny(FAMILY, seed=SEED)
    inputs = direct_inputs(lm.processor, DOCS[0])
    with torch.no_grad():
        assert torch.equal(lm.model(**inputs).logits, untouched(**inputs).logits)
    lm.clean()  # what lmms-eval calls after the requests: the model goes, the figures stay
    assert lm.runner is None and lm.summary()["overall"]["requests"] == 8


def test_loglikelihood_is_hf_loss_and_flags_greedy_continuations():
    lm = wrapper("none")
    processor, model = load_tiny(FAMILY, seed=SEED)
    # A continuation the model itself would write greedily: its first token, when that
    # token decodes to text that encodes back to it.
    greedy_texts = []
    for doc in DOCS:
        _, tokens = direct_answer(model, processor, doc, new_tokens=1)
        text = processor.tokenizer.decode(tokens)
        if processor.tokenizer.encode(text, add_special_tokens=False) == tokens:
            greedy_texts.append(text)
        else:
            greedy_texts.append(" yes")
    assert any(text != " yes" for text in greedy_texts)
    results = lm.loglikelihood(requests("loglikelihood", greedy_texts))
    for (mean_loss, greedy), text, doc in zip(results, greedy_texts, DOCS, strict=True):
        context = direct_inputs(processor, doc)["input_ids"].shape[1]
        full = direct_inputs(processor, doc, text)
        labels = full["input_ids"].clone()
        labels[:, :context] = -100  # HF's loss averages over the continuation only
        with torch.no_grad():
            loss = model(**full, labels=labels).loss.item()
        assert mean_loss == pytest.approx(loss, rel=1e-5)  # lmms-eval's convention: HF's loss
        assert greedy == (text != " yes")


def test_requests_of_several_kinds_and_refusals():
    lm = wrapper("pact", max_new_tokens=2)
    short = lm.generate_until(requests())  # the wrapper's bound beats the task's 5
    processor, model = load_tiny(FAMILY, seed=SEED)
    with pact.attached(model, "pact"):
        assert short == [direct_answer(model, processor, doc, 2)[0] for doc in DOCS]
    video = [{"image": "clip.mp4", "question": "?"}]
    lm.task_dict = {TASK: {SPLIT: video}}
    with pytest.raises(ValueError, match="videos and audio are not supported"):
        lm.generate_until(requests(docs=video))


def test_generation_kwargs_and_totals():
    generation = Generation.from_kwargs({"until": "\n", "max_new_tokens": 9, "temperature": 0})
    assert (generation.until, generation.max_new_tokens) == (("\n",), 9)
    assert generation.generate_kwargs() == {"max_new_tokens": 9, "do_sample": False, "num_beams": 1}
    assert generation.cut(" B. because\nmore") == "B. because"
    sampled = Generation.from_kwargs({"temperature": 0.7, "top_p": 0.9}, cap=4)
    assert sampled.generate_kwargs() == {
        "max_new_tokens": 4,
        "do_sample": True,
        "num_beams": 1,
        "temperature": 0.7,
        "top_p": 0.9,
    }
    totals = TaskTotals(requests=4, visual_seen=200, visual_kept=50, prefill_s=2.0)
    summary = totals.summary()
    assert summary["reduction_ratio"] == 0.75 and summary["prefill_s_per_request"] == 0.5


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_processors_match_their_models(family):
    processor, model = load_tiny(family, seed=SEED)
    inputs = direct_inputs(processor, DOCS[1])
    with pact.attached(model, "pact") as handle, torch.no_grad():
        model(**inputs)  # a placeholder count the model disagrees with would raise here
    placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert handle.stats.visual_in == placeholders > 0


def test_registered_with_lmms_eval_and_built_from_an_argument_string():
    from lmms_eval.api.registry import MODEL_REGISTRY
    from lmms_eval.models import get_model

    from pact.eval import lmms_manifest
    from pact.eval.chat import PactChatLMM
    from pact.eval.lmms import PactLMM

    # lmms-eval's rule: the chat form unless --force_simple.
    assert get_model("pact") is PactChatLMM and get_model("pact", force_simple=True) is PactLMM
    assert MODEL_REGISTRY["pact"] is PactLMM
    pyproject = Path(__file__).parents[1].joinpath("pyproject.toml").read_text("utf-8")
    entry_point = '[project.entry-points."lmms_eval.models"]\npact = "pact.eval:lmms_manifest"'
    assert entry_point in pyproject
    assert lmms_manifest().simple_class_path == "pact.eval.lmms.PactLMM"
    assert lmms_manifest().chat_class_path == "pact.eval.chat.PactChatLMM"
    lm = PactLMM.create_from_arg_string(
        "pretrained=tiny:llava,config=pact,overrides=keep_ratio=0.3;clusterer.cutoff=0.3",
        {"batch_size": 2, "device": "cpu", "max_batch_size": None},
    )
    assert lm.pact_config == pact.PactConfig.load(
        "pact", ["keep_ratio=0.3", "clusterer.cutoff=0.3"]
    )
    assert lm.batch_size == 2 and str(lm.device) == "cpu"


def test_bad_wrapper_arguments_are_named():
    from pact.errors import ConfigError
    from pact.eval.lmms import PactLMM

    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        PactLMM("tiny:llava", batch_size=0)
    with pytest.raises(ConfigError, match=r"stages\.0\.clusterer\.cutof"):
        PactLMM("tiny:llava", overrides="clusterer.cutof=0.3")
    with pytest.raises(ValueError, match="--model 'tiny:nope'"):
        PactLMM("tiny:nope")
