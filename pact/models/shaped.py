"""The models ``pact bench speed`` runs on: built-in tiny models, random-weight models of a
real decoder shape (``shape:qwen2-0.5b``), or a real checkpoint (local path or hub id).

Every loader returns a :class:`Subject`: the model, one batch for it, and the id of its
image placeholder token (to count visual tokens without a reduction attached).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pact.models import checkpoint
from pact.models import tiny as tiny_models

SHAPES = {"qwen2-0.5b": tiny_models.QWEN2_0_5B_SHAPE, "qwen2-7b": tiny_models.QWEN2_7B_SHAPE}
"""``shape:<name>`` choices and the decoder shape each names."""
SHAPED_FAMILY = "llava_onevision"
"""The family of ``shape:<name>`` models unless ``shape:<name>:<family>`` names one (a vision
stage, VisionZip's, needs ``llava``, ``qwen2_vl`` or ``qwen2_5_vl``)."""
PROMPT = ("text:12", "image", "text:24")
"""One image between a short system-like prefix and a short question."""


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


def make_batch(tiny: tiny_models.TinyVLM, batch_size: int, seed: int = 0) -> dict:
    """``batch_size`` rows of :data:`PROMPT` (no padding), each with its own image."""
    return tiny.inputs([list(PROMPT)] * batch_size, seed=seed)


def check_model_spec(spec: str, image: str | None) -> str:
    """``tiny``, ``shape`` or ``checkpoint``; bad specs raise ValueError naming --model."""
    kind, sep, name = spec.partition(":")
    if sep and kind == "tiny":
        if name not in tiny_models.FAMILIES:
            raise ValueError(
                f"--model tiny:<family> takes {', '.join(tiny_models.FAMILIES)}; got {name!r}"
            )
        return "tiny"
    if sep and kind == "shape":
        name, _, family = name.partition(":")
        if name not in SHAPES:
            raise ValueError(f"--model shape:<name> takes {', '.join(SHAPES)}; got {name!r}")
        if family and family not in tiny_models.FAMILIES:
            raise ValueError(
                f"--model shape:<name>:<family> takes {', '.join(tiny_models.FAMILIES)}; "
                f"got {family!r}"
            )
        return "shape"
    if image is None:
        raise ValueError(f"--image is required with a checkpoint --model ({spec!r})")
    if not Path(image).is_file():
        raise ValueError(f"--image: no such file {image!r}")
    return "checkpoint"


def load(spec: str, image_tokens: int, dtype: str, device: str, seed: int,
         image: str | None = None, prompt: str = "Describe the image.") -> Subject:  # fmt: skip
    """The model named by ``spec`` (see :func:`check_model_spec`) and one batch of one row."""
    kind = check_model_spec(spec, image)
    name = spec.partition(":")[2]
    if kind == "checkpoint":
        return _checkpoint(spec, image, prompt, dtype, device)
    torch_dtype = checkpoint.DTYPES[dtype]
    if kind == "tiny":
        tiny = tiny_models.build(name, seed=seed, dtype=torch_dtype, device=device)
        description = f"tiny random-weight {name} (qwen2 decoder), seed {seed}"
    else:
        name, _, family = name.partition(":")
        family = family or SHAPED_FAMILY
        shape = SHAPES[name]
        tiny = tiny_models.build_shaped(
            shape, family, image_tokens=image_tokens, dtype=torch_dtype, device=device, seed=seed
        )
        description = (
            f"random-weight {family}, {name}-shaped decoder ({shape['layers']} layers, "
            f"hidden {shape['hidden']}), {dtype}, seed {seed}"
        )
    # One image between a short prefix and a question, as the end-to-end GPU suite uses.
    return Subject(tiny.model, make_batch(tiny, 1, seed), tiny.image_token_id, description)


def _checkpoint(path: str, image: str, prompt: str, dtype: str, device: str) -> Subject:
    """A real checkpoint through its own processor and chat template.

    Not exercised by the offline tests (they have no weights); kept to what transformers'
    image-text-to-text models share.
    """
    processor, model = checkpoint.load(path, device, dtype)
    picture = checkpoint.load_image(image)
    batch = checkpoint.build_inputs(processor, picture, prompt, model.device, model.dtype)
    config = model.config
    token = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    return Subject(model, batch, token, f"checkpoint {path}, {checkpoint.DTYPES[dtype]}")
