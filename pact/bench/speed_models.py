"""Models and inputs for ``pact bench speed``: built-in tiny models, random-weight models of a
real decoder shape, or a real checkpoint (local path or hub id).

Every loader returns a :class:`Subject`: the model, one batch for it, and the id of its
image placeholder token (to count visual tokens without a reduction attached).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SHAPES = {"qwen2-0.5b": "QWEN2_0_5B_SHAPE", "qwen2-7b": "QWEN2_7B_SHAPE"}
"""``shape:<name>`` choices and the :mod:`pact.bench.tiny` constant each names."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Subject:
    """What the benchmark runs on."""

    model: Any
    batch: dict
    image_token_id: int | None
    description: str

    def visual_tokens(self) -> int | None:
        """Image placeholders in the batch (what ``none`` keeps)."""
        if self.image_token_id is None:
            return None
        return int((self.batch["input_ids"] == self.image_token_id).sum())


def check_model_spec(spec: str, image: str | None) -> str:
    """``tiny``, ``shape`` or ``checkpoint``; bad specs raise ValueError naming --model."""
    from pact.bench.tiny import FAMILIES

    kind, sep, name = spec.partition(":")
    if sep and kind == "tiny":
        if name not in FAMILIES:
            raise ValueError(f"--model tiny:<family> takes {', '.join(FAMILIES)}; got {name!r}")
        return "tiny"
    if sep and kind == "shape":
        if name not in SHAPES:
            raise ValueError(f"--model shape:<name> takes {', '.join(SHAPES)}; got {name!r}")
        return "shape"
    if image is None:
        raise ValueError(f"--image is required with a checkpoint --model ({spec!r})")
    if not Path(image).is_file():
        raise ValueError(f"--image: no such file {image!r}")
    return "checkpoint"


def load(spec: str, image_tokens: int, dtype: str, device: str, seed: int,
         image: str | None = None, prompt: str = "Describe the image.") -> Subject:  # fmt: skip
    """The model named by ``spec`` (see :func:`check_model_spec`) and one batch of one row."""
    from pact.bench import tiny as tiny_models
    from pact.bench.end_to_end import make_batch

    kind = check_model_spec(spec, image)
    name = spec.partition(":")[2]
    if kind == "checkpoint":
        return _checkpoint(spec, image, prompt, DTYPES[dtype], device)
    if kind == "tiny":
        tiny = tiny_models.build(name, seed=seed, dtype=DTYPES[dtype], device=device)
        description = f"tiny random-weight {name} (qwen2 decoder), seed {seed}"
    else:
        shape = getattr(tiny_models, SHAPES[name])
        tiny = tiny_models.build_shaped(
            shape, image_tokens=image_tokens, dtype=DTYPES[dtype], device=device, seed=seed
        )
        description = (
            f"random-weight llava_onevision, {name}-shaped decoder ({shape['layers']} layers, "
            f"hidden {shape['hidden']}), {dtype}, seed {seed}"
        )
    # One image between a short prefix and a question, as the end-to-end GPU suite uses.
    batch = make_batch(tiny, 1, seed)
    return Subject(tiny.model, batch, tiny.image_token_id, description)


def _checkpoint(path: str, image: str, prompt: str, dtype, device: str) -> Subject:
    """A real checkpoint through its own processor and chat template.

    Not exercised by the offline tests (they have no weights); kept to what transformers'
    image-text-to-text models share.
    """
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(device).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    picture = Image.open(image).convert("RGB")
    batch = processor(images=[picture], text=[text], return_tensors="pt")
    batch = batch.to(device, dtype=dtype)  # casts only the floating tensors (pixels)
    config = model.config
    token = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    return Subject(model, dict(batch), token, f"checkpoint {path}, {dtype}")
