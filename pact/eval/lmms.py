"""The lmms-eval model ``pact``: a VLM evaluated with a pact config attached.

From lmms-eval's own command line (pact registers it through an entry point)::

    lmms-eval --model pact --tasks mme \\
        --model_args pretrained=llava-hf/llava-onevision-qwen2-0.5b-ov-hf,config=pact

or from pact's: ``pact eval --model ... --tasks ... --config ...``. lmms-eval resolves
``pact`` to the chat model (:class:`pact.eval.chat.PactChatLMM`, prompts from each task's
``doc_to_messages``) unless given ``--force_simple``, which selects :class:`PactLMM`
here (prompts from ``doc_to_visual`` and the context; the only one lmms-eval lets score
log-likelihoods). Under ``torchrun`` or ``accelerate launch`` every process loads its
own copy (:mod:`pact.eval.parallel`). Importing this module imports lmms-eval.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model
from lmms_eval.models import MODEL_REGISTRY_V2
from lmms_eval.utils import Collator
from loguru import logger
from PIL import Image
from tqdm import tqdm

from pact.config import PactConfig
from pact.eval import lmms_manifest, parallel, positive_int
from pact.eval.pixels import check_checkpoint, set_pixels
from pact.eval.runner import EvalModel, Generation, RunTotals, load_model, prompt_text
from pact.hooks import attached

AUTO_BATCH_START = 32  # batch_size=auto starts here (or at max_batch_size) and halves on OOM


def parse_overrides(overrides: str | Sequence[str] | None) -> tuple[str, ...]:
    """``path=value`` overrides from a list, or from one string separated by ';'.

    lmms-eval's ``--model_args`` already splits on ',' and its values hold '=', so several
    overrides in one argument string are joined with ';'.
    """
    if not overrides:
        return ()
    if isinstance(overrides, str):
        overrides = overrides.split(";")
    return tuple(item.strip() for item in overrides if item.strip())


def parse_batch_size(batch_size: int | str, max_batch_size: int | None) -> tuple[int, bool]:
    """``(first batch size, adaptive?)``: a positive count, or ``auto`` (also lmms-eval's
    ``auto:N``), which starts at ``max_batch_size`` (else 32) and halves whenever a batch
    runs out of device memory."""
    if isinstance(batch_size, str) and batch_size.strip().startswith("auto"):
        start = max_batch_size or AUTO_BATCH_START
        return positive_int(start, "max_batch_size"), True
    return positive_int(batch_size, "batch_size"), False


class LogLikelihood(tuple, GenerationResult):
    """``(mean token loss of the continuation, greedy?)``, which is also an lmms-eval
    ``GenerationResult`` whose ``text`` is that pair.

    lmms-eval 0.7.3's evaluator keeps a ``GenerationResult``'s ``text`` as it is but turns
    any other output that is not text into its ``str``, so plain ``(float, bool)`` pairs
    reach the task's scoring as strings and every log-likelihood task fails there.
    """


@register_model("pact")
class PactLMM(lmms):
    """Any VLM pact supports, answering lmms-eval requests with a pact config attached.

    Args:
        pretrained: checkpoint (local path or hub id) or ``tiny:<family>`` (a built-in
            random-weight model with a byte-level processor, for tests).
        config: preset name or YAML/JSON path (lmms-eval's ``--model_args`` are text: this
            is a command boundary, parsed here once) or a :class:`PactConfig` (``pact
            eval`` passes the one it parsed).
        overrides: ``path=value`` overrides (a list, or one string joined with ';').
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda when available); with
            several processes each takes ``cuda:LOCAL_RANK``.
        dtype: ``auto`` (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16.
        attn: attention implementation the model is loaded with.
        batch_size: requests run together (left padded), or ``auto``.
        max_new_tokens: upper bound on each answer's tokens (default: the task's).
        seed: seed of a tiny model's weights.
        device_map: transformers' placement of a checkpoint's layers (``auto`` spreads it
            over the GPUs; with several processes, over this process's share of them).
        max_pixels, min_pixels: Qwen-VL's pixel budget per image (default: lmms-eval's
            for the checkpoint's family; a tiny model keeps its own).
        max_batch_size: where ``batch_size=auto`` starts.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str = "tiny:llava",
        config: str | PactConfig = "pact",
        overrides: str | Sequence[str] | None = None,
        device: str | None = None,
        dtype: str = "auto",
        attn: str = "sdpa",
        batch_size: int | str = 1,
        max_new_tokens: int | None = None,
        seed: int = 0,
        device_map: str | None = None,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.pact_config = PactConfig.load(config, parse_overrides(overrides))
        self._batch_size, self.auto_batch = parse_batch_size(batch_size, max_batch_size)
        self.max_new_tokens = (
            None if max_new_tokens is None else positive_int(max_new_tokens, "max_new_tokens")
        )
        self.pretrained = pretrained
        self.ranks = parallel.Ranks.from_env()
        placement = parallel.rank_placement(device_map, self.ranks)
        device = parallel.rank_device(device, self.ranks, placement)
        if self.ranks.parallel:
            self.accelerator = parallel.join(device, self.ranks)
            self._rank, self._world_size = self.ranks.rank, self.ranks.world_size
        if not pretrained.startswith("tiny:"):
            check_checkpoint(pretrained, min_pixels, max_pixels)  # before the weights load
        processor, model = load_model(pretrained, device, dtype, attn, int(seed), placement)
        self.pixels = set_pixels(
            processor,
            model.config.model_type,
            min_pixels,
            max_pixels,
            lmms_eval_defaults=not pretrained.startswith("tiny:"),
        )
        self.runner: EvalModel | None = EvalModel(processor, model)
        self.totals = RunTotals()

    @property
    def model(self):
        return self.runner.model

    @property
    def processor(self):
        return self.runner.processor

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self):
        return self.runner.model.device

    def summary(self) -> dict[str, Any]:
        """Visual tokens seen and kept, reduction ratio and mean seconds, overall and per
        task; with several processes, summed over them once the requests are answered."""
        return self.totals.summary()

    # ------------------------------------------------------------------ requests
    def generate_until(self, requests) -> list[str]:
        """Answers of ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)`` requests."""
        return self._answer(requests, "generate_until", _generation_group, self._generate_chunk)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """``(mean token loss of the continuation, continuation is greedy)`` per request:
        lmms-eval 0.7's convention (its models return HF's loss; its multiple-choice
        scoring picks the choice of least loss), i.e. ``-log p(continuation | context)``
        divided by the continuation's token count."""
        return self._answer(requests, "loglikelihood", _task_group, self._loglikelihood_chunk)

    def generate_until_multi_round(self, requests) -> list[list[str]]:
        """Each request's answers of every round (a list: lmms-eval passes lists of text on
        to the task as they are): the task's ``doc_to_text`` is asked for round 1, 2, ...
        with the answers so far, until it says the dialogue is over."""
        answers: list[list[str]] = []
        with attached(self.model, self.pact_config) as handle:
            for request in self._progress(requests, "pact generate_until_multi_round"):
                answers.append([] if _padding(request) else self._rounds(handle, request.args))
        return answers

    def clean(self) -> None:
        # lmms-eval calls this on every rank once the requests are answered: the moment
        # to sum the ranks' figures. The model's memory is freed; the totals stay.
        if self.ranks.parallel:
            self.totals = RunTotals.merged(parallel.gather(self.totals, self.ranks))
        if self.ranks.main:
            overall = self.totals.overall().summary()
            split = self.totals.rank_requests or [overall["requests"]]
            logger.info(
                "pact: visual tokens kept {}/{}, reduction {:.4f}, requests {} (per process: {})",
                overall["visual_tokens_kept"], overall["visual_tokens_seen"],
                overall["reduction_ratio"], overall["requests"], ", ".join(map(str, split)),
            )  # fmt: skip
        self.runner = None
        super().clean()

    # ------------------------------------------------------------------- helpers
    def _answer(self, requests, kind: str, group: Callable, run_chunk: Callable) -> list:
        """Requests batched by lmms-eval's Collator (grouped by ``group``, longest first),
        run chunk by chunk, returned in the requests' order. The padding requests lmms-eval
        adds to even out the ranks are answered with nothing and counted nowhere."""
        live = [index for index, request in enumerate(requests) if not _padding(request)]
        collator = Collator(
            [requests[index].args for index in live],
            lambda args: -_length(args),
            group_fn=group,
            grouping=True,
        )
        outputs: list = []
        with attached(self.model, self.pact_config) as handle:
            chunks = collator.get_batched(n=self.batch_size)
            for chunk in self._progress(chunks, f"pact {kind}"):
                outputs += self._fitting(chunk, lambda rows: run_chunk(handle, rows))
        empty = "" if kind == "generate_until" else LogLikelihood((0.0, False))
        answers = [empty] * len(requests)
        for index, output in zip(live, collator.get_original(outputs), strict=True):
            answers[index] = output
        return answers

    def _fitting(self, chunk: list, run_chunk: Callable) -> list:
        """``run_chunk`` over ``chunk``; with ``batch_size=auto``, in halves (and halves of
        those) while the device runs out of memory."""
        outputs: list = []
        start = 0
        while start < len(chunk):
            rows = chunk[start : start + self._batch_size]
            try:
                outputs += run_chunk(rows)
            except torch.OutOfMemoryError:
                if not self.auto_batch or self._batch_size == 1:
                    raise
                torch.cuda.empty_cache()
                self._batch_size = max(1, self._batch_size // 2)
                logger.warning("pact: out of memory; batch size now {}", self._batch_size)
                continue
            start += len(rows)
        return outputs

    def _generate_chunk(self, handle, chunk: list) -> list[str]:
        first = chunk[0]
        generation = Generation.from_kwargs(dict(first[1]), self.max_new_tokens)
        texts, images = [], []
        for context, _, doc_to_visual, doc_id, task, split in chunk:
            visuals = self._visuals(doc_to_visual, task, split, doc_id)
            texts.append(self._prompt(context, visuals))
            images.extend(visuals)
        answers, totals = self.runner.generate(handle, texts, images, generation)
        self.totals.add(first[4], totals)
        return answers

    def _loglikelihood_chunk(self, handle, chunk: list) -> list[tuple[float, bool]]:
        rows = []
        for context, target, doc_to_visual, doc_id, task, split in chunk:
            doc = self._doc(task, split, doc_id)
            continuation = target if isinstance(target, str) else target(doc)
            visuals = self._visuals(doc_to_visual, task, split, doc_id)
            rows.append((self._prompt(context, visuals), continuation, visuals))
        results, totals = self.runner.loglikelihood(handle, rows)
        self.totals.add(chunk[0][4], totals)
        return [LogLikelihood(result) for result in results]

    def _rounds(self, handle, args) -> list[str]:
        context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = args
        doc = self._doc(task, split, doc_id)
        visuals = self._visuals(doc_to_visual, task, split, doc_id)

        def next_turn(outputs: list[str], info):
            visuals, context, over, previous, info = doc_to_text(
                doc, previous_output=list(outputs), round_idx=len(outputs),
                previous_round_info=info,
            )  # fmt: skip
            if over:
                return None, previous, info
            images = request_images(visuals or [], task)
            return (self._prompt(context, images), images), previous, info

        first = (self._prompt(context, visuals), visuals)
        return self._dialogue(handle, task, gen_kwargs, first, next_turn)

    def _dialogue(self, handle, task: str, gen_kwargs, turn, next_turn) -> list[str]:
        """Answer ``turn`` (prompt text, images), then each turn ``next_turn(answers so far,
        round info)`` returns with the answers it keeps, until it returns no turn."""
        generation = Generation.from_kwargs(dict(gen_kwargs), self.max_new_tokens)
        outputs: list[str] = []
        info = None
        while turn is not None:
            text, images = turn
            outputs.append(self._generate_one(handle, task, text, images, generation))
            turn, previous, info = next_turn(outputs, info)
            outputs = list(previous)
        return outputs

    def _generate_one(self, handle, task: str, text: str, images: list, generation) -> str:
        answers, totals = self.runner.generate(handle, [text], images, generation)
        self.totals.add(task, totals)
        return answers[0]

    def _progress(self, items, desc: str):
        quiet = not self.ranks.main or not sys.stderr.isatty()
        return tqdm(items, desc=desc, disable=quiet, leave=False)

    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list:
        """The request's images as RGB PIL images; other media are refused by name."""
        if doc_to_visual is None:
            return []
        return request_images(doc_to_visual(self._doc(task, split, doc_id)) or [], task)

    def _prompt(self, context: str, images: list) -> str:
        return prompt_text(self.processor, context, len(images))


def request_images(visuals, task: str) -> list:
    """``visuals`` (nested lists allowed) as RGB PIL images; videos and audio are refused."""
    images = []
    for item in visuals:
        if isinstance(item, (list, tuple)):
            images.extend(item)
        elif item is not None:
            images.append(item)
    for item in images:
        if not isinstance(item, Image.Image):
            raise ValueError(
                f"task {task!r}: the pact model takes images (PIL.Image); "
                f"got {type(item).__name__} (videos and audio are not supported)"
            )
    return [image.convert("RGB") for image in images]


def _padding(request) -> bool:
    """A copy lmms-eval adds so that every rank runs as many requests; its answer is unused."""
    return bool((request.metadata or {}).get("__padding_only__"))


def _length(args) -> int:
    # Collator's sort key: longest contexts first, so a batch's rows pad little.
    second = args[1]
    return len(args[0]) + (len(second) if isinstance(second, str) else 0)


def batch_group(task: str, split: str, gen_kwargs: dict | None = None) -> dict:
    """Collator's group: one batch holds one task, split and set of generation kwargs."""
    return {"group": json.dumps([task, split, gen_kwargs], sort_keys=True, default=str)}


def _generation_group(args) -> dict:
    _, gen_kwargs, _, _, task, split = args
    return batch_group(task, split, gen_kwargs)


def _task_group(args) -> dict:
    return batch_group(args[4], args[5])


# lmms-eval finds ``pact`` through the entry point; registering here as well makes
# ``get_model("pact")`` work in a checkout that was never pip-installed.
MODEL_REGISTRY_V2.register_manifest(lmms_manifest(), overwrite=True)
