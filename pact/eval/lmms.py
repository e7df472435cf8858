"""The lmms-eval model ``pact``: a VLM evaluated with a pact config attached.

From lmms-eval's own command line (pact registers it through an entry point)::

    lmms-eval --model pact --tasks mme \\
        --model_args pretrained=llava-hf/llava-onevision-qwen2-0.5b-ov-hf,config=pact

or from pact's: ``pact eval --model ... --tasks ... --config ...``. Importing this module
imports lmms-eval.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model
from lmms_eval.models import MODEL_REGISTRY_V2
from PIL import Image
from tqdm import tqdm

from pact.config import PactConfig
from pact.eval import lmms_manifest
from pact.eval.runner import EvalModel, Generation, RunTotals, load_model, prompt_text
from pact.hooks import attached


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
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda when available).
        dtype: ``auto`` (bfloat16 on cuda, float32 on cpu), float32, bfloat16, float16.
        attn: attention implementation the model is loaded with.
        batch_size: requests generated together (left padded).
        max_new_tokens: upper bound on each answer's tokens (default: the task's).
        seed: seed of a tiny model's weights.
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
        max_batch_size: int | None = None,  # lmms-eval passes it; batches are fixed here
    ) -> None:
        super().__init__()
        self.pact_config = PactConfig.load(config, parse_overrides(overrides))
        self._batch_size = _positive(batch_size, "batch_size")
        self.max_new_tokens = (
            None if max_new_tokens is None else _positive(max_new_tokens, "max_new_tokens")
        )
        self.pretrained = pretrained
        processor, model = load_model(pretrained, device, dtype, attn, int(seed))
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
        """Visual tokens seen and kept, reduction ratio and mean seconds, overall and per task."""
        return self.totals.summary()

    # ------------------------------------------------------------------ requests
    def generate_until(self, requests) -> list[str]:
        """Answers of ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)`` requests."""
        answers: list[str] = [""] * len(requests)
        with attached(self.model, self.pact_config) as handle:
            for indices in _progress(self._batches(requests), "pact generate_until"):
                first = requests[indices[0]].args
                generation = Generation.from_kwargs(dict(first[1]), self.max_new_tokens)
                texts, images = [], []
                for index in indices:
                    context, _, doc_to_visual, doc_id, task, split = requests[index].args
                    visuals = self._visuals(doc_to_visual, task, split, doc_id)
                    texts.append(self._prompt(context, visuals))
                    images.extend(visuals)
                batch, totals = self.runner.generate(handle, texts, images, generation)
                self.totals.add(first[4], totals)
                for index, answer in zip(indices, batch, strict=True):
                    answers[index] = answer
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), continuation is greedy)`` per request."""
        results = []
        with attached(self.model, self.pact_config) as handle:
            for request in _progress(requests, "pact loglikelihood"):
                context, target, doc_to_visual, doc_id, task, split = request.args
                doc = self._doc(task, split, doc_id)
                continuation = target if isinstance(target, str) else target(doc)
                visuals = self._visuals(doc_to_visual, task, split, doc_id)
                result, totals = self.runner.loglikelihood(handle, context, continuation, visuals)
                self.totals.add(task, totals)
                results.append(result)
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(
            "the pact model answers single-turn requests (generate_until, loglikelihood)"
        )

    def clean(self) -> None:
        # lmms-eval frees model memory after the requests; the totals stay readable.
        self.runner = None
        super().clean()

    # ------------------------------------------------------------------- helpers
    def _batches(self, requests) -> list[list[int]]:
        """Request indices in batches of one task, split and generation kwargs each,
        longest contexts first so a batch's rows pad little."""
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            _, gen_kwargs, _, _, task, split = request.args
            key = (task, split, json.dumps(gen_kwargs, sort_keys=True, default=str))
            groups.setdefault(key, []).append(index)
        batches = []
        for indices in groups.values():
            indices.sort(key=lambda index: -len(requests[index].args[0]))
            size = self.batch_size
            batches += [indices[start : start + size] for start in range(0, len(indices), size)]
        return batches

    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list:
        """The request's images as RGB PIL images; other media are refused by name."""
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self._doc(task, split, doc_id)) or []
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

    def _prompt(self, context: str, images: list) -> str:
        return prompt_text(self.processor, context, len(images))


def _positive(value: int | str, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return number


def _progress(items, desc: str):
    return tqdm(items, desc=desc, disable=not sys.stderr.isatty(), leave=False)


# lmms-eval finds ``pact`` through the entry point; registering here as well makes
# ``get_model("pact")`` work in a checkout that was never pip-installed.
MODEL_REGISTRY_V2.register_manifest(lmms_manifest(), overwrite=True)
