"""``pact run --model PATH_OR_HUB_ID``: one image and a prompt on a real checkpoint.

Loads the checkpoint with transformers' auto classes (pact downloads nothing itself),
builds the prompt with the processor's chat template, generates greedily with pact
attached and, unless told not to, once more without it, so the answers can be compared.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from pact.config import PactConfig
from pact.hooks import attached

BUILTIN_PREFIX = "tiny:"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_checkpoint(model: str) -> bool:
    """Whether ``--model`` names a checkpoint rather than a built-in tiny family.

    ``tiny:NAME`` is always built-in; an existing directory or a name with a '/' (hub ids
    are ``owner/name``) is a checkpoint; anything else is taken as a built-in name, so a
    typo gets the list of families instead of a hub lookup.
    """
    if model.startswith(BUILTIN_PREFIX):
        return False
    return os.path.isdir(model) or "/" in model


@dataclass
class Settings:
    """What ``pact run`` was asked to do on a checkpoint."""

    model: str
    image: str | None
    prompt: str
    config: Any = "pact"
    overrides: tuple[str, ...] = ()
    max_new_tokens: int = 32
    device: str | None = None  # None: cuda when available
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    attn: str = "sdpa"
    compare: bool = True


@dataclass
class Generation:
    """One greedy generation: the answer, its timings and (when reduced) pact's stats."""

    answer: str
    tokens: list[int]
    prefill_s: float
    generate_s: float
    stats: dict[str, Any] = field(default_factory=dict)


class _FirstTokenClock:
    """A stopping criterion that never stops: it notes when the first new token exists.

    ``generate`` calls it after every step, so its first call ends the prefill; timing
    this way costs no extra forward pass.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.first: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.first is None:
            _sync(self.device)
            self.first = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously; without this the clock reads launch time.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_image(path: str | None):
    """The RGB image at ``path``; errors name ``--image``."""
    from PIL import Image, UnidentifiedImageError

    if not path:
        raise ValueError("--image is required with a checkpoint --model (an image file)")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"--image {path!r} cannot be read as an image: {error}") from error


def load(settings: Settings):
    """``(processor, model)`` from a local path or hub id, on the asked device and dtype."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if settings.model.startswith((".", "~", os.sep)) and not os.path.isdir(settings.model):
        # transformers would call this a malformed hub id; say what was meant.
        raise ValueError(f"--model {settings.model!r}: no such directory")
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    dtype = DTYPES.get(settings.dtype)
    if dtype is None:  # auto: half precision only where it is fast
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        processor = AutoProcessor.from_pretrained(settings.model)
        model = AutoModelForImageTextToText.from_pretrained(
            settings.model, dtype=dtype, attn_implementation=settings.attn
        )
    except (OSError, ValueError, KeyError, ImportError) as error:
        # transformers says "not a valid model identifier", "unrecognized configuration"
        # or names the missing attention package; prefix the argument it concerns.
        raise ValueError(f"--model {settings.model!r} cannot be loaded: {error}") from error
    return processor, model.to(device).eval()


def build_inputs(processor, image, prompt: str, device: torch.device, dtype: torch.dtype):
    """Processor outputs for one user turn holding ``image`` and ``prompt``."""
    if getattr(processor, "chat_template", None):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:  # no template: the image placeholder, then the prompt (LLaVA-1.5's raw form)
        text = f"{getattr(processor, 'image_token', '<image>')}\n{prompt}"
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    moved = {}
    for name, value in inputs.items():
        # Pixels follow the model's dtype; ids, masks and grid sizes stay integers.
        cast = dtype if value.is_floating_point() else None
        moved[name] = value.to(device=device, dtype=cast)
    return moved


def generate(model, processor, inputs: dict, max_new_tokens: int, handle=None) -> Generation:
    """Greedy generation; prefill time is up to the first new token, the rest is decoding."""
    from transformers import StoppingCriteriaList

    clock = _FirstTokenClock(model.device)
    tokenizer = getattr(processor, "tokenizer", processor)
    if handle is not None:
        handle.stats.reset()
    _sync(model.device)
    start = time.perf_counter()
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stopping_criteria=StoppingCriteriaList([clock]),
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    _sync(model.device)
    end = time.perf_counter()
    new = output[0, inputs["input_ids"].shape[1] :].tolist()
    answer = tokenizer.decode(new, skip_special_tokens=True).strip()
    first = clock.first or end
    stats = handle.stats.summary() if handle is not None else {}
    return Generation(answer, new, first - start, end - first, stats)


def run_checkpoint(settings: Settings) -> tuple[Generation, Generation | None, Any]:
    """``(reduced, unreduced or None, model)``; pact's attach-time checks run first."""
    config = PactConfig.load(settings.config, settings.overrides)  # bad --set fails early
    image = load_image(settings.image)
    processor, model = load(settings)
    inputs = build_inputs(processor, image, settings.prompt, model.device, model.dtype)
    try:
        with attached(model, config) as handle:
            reduced = generate(model, processor, inputs, settings.max_new_tokens, handle)
    except TypeError as error:
        # pact raises TypeError for model structures it does not support; main() turns
        # ValueError into exit code 2, so name the argument and re-raise as one.
        raise ValueError(f"--model {settings.model!r}: {error}") from error
    baseline = None
    if settings.compare:
        baseline = generate(model, processor, inputs, settings.max_new_tokens)
    return reduced, baseline, model


def format_checkpoint_report(
    settings: Settings, reduced: Generation, baseline: Generation | None, model
) -> str:
    """Answer, reduction stats and timings; the unreduced answer when compared."""
    last = reduced.stats.get("last_call", {})
    seconds = last.get("seconds", {})
    visual_in, visual_out = last.get("visual_in", []), last.get("visual_out", [])
    steps = max(len(reduced.tokens) - 1, 1)
    lines = [
        f"model: {settings.model} ({type(model).__name__}, {model.dtype}, {model.device})",
        f"config: {' '.join([str(settings.config), *settings.overrides])}",
        f"answer: {reduced.answer}",
        f"visual tokens in: {_join(visual_in)}",
        f"visual tokens out: {_join(visual_out)}",
        f"reduction ratio: {last.get('reduction_ratio', 0.0):.4f}",
        "pact seconds per step, score/cluster/merge (last reducing forward): "
        + "/".join(f"{seconds.get(k, 0.0):.4f}" for k in ("score", "cluster", "merge")),
        f"prefill s: {reduced.prefill_s:.3f}",
        f"generation s: {reduced.generate_s:.3f} ({len(reduced.tokens)} new tokens, "
        f"{reduced.generate_s / steps:.4f} s/token after the first)",
    ]
    if baseline is not None:
        lines += [
            f"unreduced answer: {baseline.answer}",
            f"unreduced prefill s: {baseline.prefill_s:.3f}",
            f"unreduced generation s: {baseline.generate_s:.3f}",
            f"answers match: {'yes' if baseline.tokens == reduced.tokens else 'no'}",
        ]
    lines.append(
        "timings: one run each, the first (pact) also pays warm-up; "
        "`pact bench speed` reports medians"
    )
    return "\n".join(lines)


def _join(values: list[int]) -> str:
    return ",".join(str(v) for v in values) or "-"
