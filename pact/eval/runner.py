"""What the lmms-eval wrapper does with a model, free of lmms-eval itself.

:class:`EvalModel` turns (context, images) pairs into the processor's inputs with the chat
template, generates answers or scores continuations with a pact config attached, and adds
what each batch cost to a :class:`RunTotals`: visual tokens seen and kept (from the
handle's stats) and prefill / generation seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from pact.hooks import families
from pact.models import checkpoint

DEFAULT_MAX_NEW_TOKENS = 256  # when neither the task nor the wrapper says


@dataclass
class TaskTotals:
    """Sums over the requests of one task (a request's seconds are its batch's)."""

    requests: int = 0
    visual_seen: int = 0
    visual_kept: int = 0
    prefill_s: float = 0.0
    generate_s: float = 0.0
    reduce_s: float = 0.0
    """pact's own seconds (score, cluster, merge) inside the prefills."""
    prefill_flops: int = 0
    """Analytic decoder FLOPs of the reduced prefills (:mod:`pact.flops`, the handle's stats)."""
    prefill_flops_unreduced: int = 0
    """The same prefills' FLOPs without reduction (0: the config reduced nothing)."""

    def add(self, other: TaskTotals) -> None:
        for name in ("requests", "visual_seen", "visual_kept", "prefill_s", "generate_s",
                     "reduce_s", "prefill_flops", "prefill_flops_unreduced"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict[str, Any]:
        """Plain numbers: counts, reduction ratio (1 - kept/seen), mean seconds per request."""
        per_request = max(self.requests, 1)
        ratio = 1.0 - self.visual_kept / self.visual_seen if self.visual_seen else 0.0
        return {
            "requests": self.requests,
            "visual_tokens_seen": self.visual_seen,
            "visual_tokens_kept": self.visual_kept,
            "reduction_ratio": round(ratio, 4),
            "prefill_s_per_request": self.prefill_s / per_request,
            "generation_s_per_request": self.generate_s / per_request,
            "reduction_s_per_request": self.reduce_s / per_request,
            "prefill_tflops": self.prefill_flops / 1e12,
            "prefill_tflops_unreduced": self.prefill_flops_unreduced / 1e12,
            "prefill_flops_ratio": (
                round(self.prefill_flops / self.prefill_flops_unreduced, 4)
                if self.prefill_flops_unreduced
                else None
            ),
        }


@dataclass
class RunTotals:
    """Per-task totals of a whole evaluation run."""

    tasks: dict[str, TaskTotals] = field(default_factory=dict)
    rank_requests: list[int] = field(default_factory=list)
    """Requests each rank answered, once the ranks' totals are merged (else empty)."""

    @classmethod
    def merged(cls, ranks: list[RunTotals]) -> RunTotals:
        """The sum of every rank's totals, remembering how many requests each answered."""
        total = cls(rank_requests=[run.overall().requests for run in ranks])
        for run in ranks:
            for name, task in run.tasks.items():
                total.add(name, task)
        return total

    def add(self, task: str, batch: TaskTotals) -> None:
        self.tasks.setdefault(task, TaskTotals()).add(batch)

    def overall(self) -> TaskTotals:
        total = TaskTotals()
        for task in self.tasks.values():
            total.add(task)
        return total

    def summary(self) -> dict[str, Any]:
        tasks = {name: totals.summary() for name, totals in sorted(self.tasks.items())}
        summary = {"overall": self.overall().summary(), "tasks": tasks}
        if self.rank_requests:
            summary["rank_requests"] = list(self.rank_requests)
        return summary


@dataclass
class Generation:
    """How one batch is generated, from an lmms-eval request's generation kwargs."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    until: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], cap: int | None = None) -> Generation:
        """Read the task's kwargs; ``cap`` bounds ``max_new_tokens`` (the wrapper's limit)."""
        until = kwargs.get("until") or ()
        until = (until,) if isinstance(until, str) else tuple(until)
        new_tokens = int(kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        if cap is not None:
            new_tokens = min(new_tokens, cap)
        top_p = kwargs.get("top_p")
        return cls(
            max_new_tokens=new_tokens,
            until=until,
            temperature=float(kwargs.get("temperature") or 0.0),
            top_p=None if top_p is None else float(top_p),
            num_beams=int(kwargs.get("num_beams") or 1),
        )

    def generate_kwargs(self) -> dict[str, Any]:
        """Arguments of ``model.generate``: greedy unless a positive temperature is asked."""
        sample = self.temperature > 0
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": sample}
        kwargs["num_beams"] = self.num_beams
        if sample:
            kwargs["temperature"] = self.temperature
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        return kwargs

    def cut(self, text: str) -> str:
        """The answer up to the first stop string, without surrounding blanks."""
        for stop in self.until:
            if stop:
                text = text.split(stop, 1)[0]
        return text.strip()


def prompt_text(processor, context: str, images: int) -> str:
    """The model's prompt: one user turn with ``images`` images, then ``context``.

    A context that already holds the image placeholder keeps it (no images are added).
    """
    if getattr(processor, "image_token", "<image>") in context:
        images = 0
    content = [{"type": "image"}] * images + [{"type": "text", "text": context}]
    return chat_text(processor, [{"role": "user", "content": content}])


def chat_text(processor, messages: list[dict]) -> str:
    """``messages`` (transformers' chat form) through the processor's chat template, with
    the assistant's turn opened; without a template, each turn's image placeholders then
    its text, one line each (LLaVA-1.5's raw form)."""
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image_token = getattr(processor, "image_token", "<image>")
    lines = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            lines.append(content)
            continue
        for part in content:
            lines.append(image_token if part["type"] == "image" else part.get("text", ""))
    return "\n".join(lines)


def load_model(
    spec: str,
    device: str | None,
    dtype: str = "auto",
    attn: str = "sdpa",
    seed: int = 0,
    placement: dict | None = None,
):
    """``(processor, model)`` of a checkpoint (path or hub id) or ``tiny:<family>``.

    Names follow ``pact run``: ``tiny:NAME`` or a bare name that is no directory and has no
    '/' is a built-in tiny model, given a byte-level processor
    (:mod:`pact.models.tiny_processor`). ``placement`` (transformers' ``device_map``,
    e.g. ``auto``, and ``max_memory``) spreads a checkpoint over several devices; a tiny
    model takes one.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if checkpoint.is_checkpoint(spec):
        return checkpoint.load(spec, device, dtype, attn, placement=placement)
    if placement:
        raise ValueError(
            f"device_map={placement['device_map']!r} spreads a checkpoint over devices; "
            f"the built-in {spec!r} loads onto one (device=...)"
        )
    from pact.models.tiny_processor import load_tiny

    family = spec.removeprefix(checkpoint.BUILTIN_PREFIX)
    torch_dtype = checkpoint.DTYPES.get(dtype, torch.float32)
    try:
        return load_tiny(family, seed=seed, device=device, dtype=torch_dtype, attn=attn)
    except ValueError as error:
        raise ValueError(f"--model {spec!r}: {error}") from error


class EvalModel:
    """A processor and model; each call takes the handle of the pact config attached."""

    def __init__(self, processor, model):
        self.processor = processor
        self.model = model
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"  # batched generation appends on the right
        self.visual_ids = families.visual_token_ids(model)

    def inputs(self, texts: list[str], images: list) -> dict[str, torch.Tensor]:
        """Processor outputs of a batch on the model's device (pixels in its dtype)."""
        batch = self.processor(images=images or None, text=texts, return_tensors="pt", padding=True)
        moved = {}
        for name, value in batch.items():
            cast = self.model.dtype if value.is_floating_point() else None
            moved[name] = value.to(device=self.model.device, dtype=cast)
        return moved

    def visual_count(self, input_ids: torch.Tensor) -> int:
        """Image/video placeholders in a batch: the visual tokens the model sees."""
        if not self.visual_ids:
            return 0
        ids = torch.tensor(self.visual_ids, device=input_ids.device)
        return int(torch.isin(input_ids, ids).sum())

    def generate(self, handle, texts: list[str], images: list, generation: Generation):
        """``(answers, totals)`` of one batch generated with ``handle`` attached."""
        from transformers import StoppingCriteriaList

        inputs = self.inputs(texts, images)
        clock = checkpoint.FirstTokenClock(self.model.device)  # prefill ends at token one
        before = _reduction_before(handle)
        pad = self.tokenizer.pad_token_id
        checkpoint.synchronize(self.model.device)
        start = time.perf_counter()
        with torch.no_grad():
            output = self.model.generate(
                **inputs,
                **generation.generate_kwargs(),
                stopping_criteria=StoppingCriteriaList([clock]),
                pad_token_id=self.tokenizer.eos_token_id if pad is None else pad,
            )
        checkpoint.synchronize(self.model.device)
        end = time.perf_counter()
        first = clock.first or end
        new = output[:, inputs["input_ids"].shape[1] :]
        decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        answers = [generation.cut(text) for text in decoded]
        totals = self._totals(handle, inputs, before, len(texts))
        # Every request of the batch waited for the whole batch.
        totals.prefill_s = (first - start) * len(texts)
        totals.generate_s = (end - first) * len(texts)
        return answers, totals

    def loglikelihood(self, handle, rows: list[tuple[str, str, list]]):
        """``([(loss, greedy?), ...], totals)`` of one batch of ``(prompt, continuation,
        images)`` rows, scored in one forward (left padded).

        ``loss`` is the continuation's mean token loss, ``-log p(continuation | prompt)``
        over its tokens (HF's ``loss`` with the prompt masked): what lmms-eval 0.7's own
        models return, and what its multiple-choice scoring expects (it takes the choice
        of least loss); ``greedy`` says whether greedy decoding writes the continuation.
        """
        # A continuation's tokens are the full text's past its prompt's; the image
        # placeholders expand alike in both, so the tokenizer alone counts them.
        lengths = [
            len(self.tokenizer(prompt + continuation)["input_ids"])
            - len(self.tokenizer(prompt)["input_ids"])
            for prompt, continuation, _ in rows
        ]
        images = [image for _, _, row_images in rows for image in row_images]
        inputs = self.inputs([prompt + continuation for prompt, continuation, _ in rows], images)
        before = _reduction_before(handle)
        checkpoint.synchronize(self.model.device)
        start = time.perf_counter()
        with torch.no_grad():
            logits = self.model(**inputs).logits
        checkpoint.synchronize(self.model.device)
        totals = self._totals(handle, inputs, before, len(rows))
        totals.prefill_s = (time.perf_counter() - start) * len(rows)
        width = inputs["input_ids"].shape[1]
        results = []
        for row, length in enumerate(lengths):
            # Position t predicts token t+1; left padding puts every row's end at ``width``.
            targets = inputs["input_ids"][row, width - length :]
            scores = logits[row, width - length - 1 : width - 1].float().log_softmax(-1)
            loss = -scores.gather(-1, targets[:, None]).mean().item() if length else 0.0
            results.append((loss, bool((scores.argmax(-1) == targets).all())))
        return results, totals

    def _totals(self, handle, inputs: dict, before: tuple, requests: int):
        """What one batch added to the handle's stats, as a :class:`TaskTotals`."""
        removed_before, seconds_before, flops_before, unreduced_before = before
        seen = self.visual_count(inputs["input_ids"])
        removed = handle.stats.visual_in - handle.stats.visual_out - removed_before
        return TaskTotals(
            requests=requests,
            visual_seen=seen,
            visual_kept=seen - removed,
            reduce_s=_reduction_seconds(handle) - seconds_before,
            prefill_flops=handle.stats.prefill_flops - flops_before,
            prefill_flops_unreduced=handle.stats.prefill_flops_unreduced - unreduced_before,
        )


def _reduction_seconds(handle) -> float:
    seconds = handle.stats.seconds
    return seconds.score + seconds.cluster + seconds.merge


def _reduction_before(handle) -> tuple[int, float, int, int]:
    """Visual tokens removed, seconds spent and FLOPs counted so far: a batch's share is
    the difference."""
    stats = handle.stats
    removed = stats.visual_in - stats.visual_out
    return removed, _reduction_seconds(handle), stats.prefill_flops, stats.prefill_flops_unreduced
