"""Real checkpoints (a local directory or a hub id) and the model names commands take.

Loads a checkpoint with transformers' auto classes (pact downloads nothing itself) and
builds one user turn of an image and a prompt with the processor's chat template; used by
``pact run``, ``pact bench speed`` and the lmms-eval model.
"""

from __future__ import annotations

import os
import time

import torch

BUILTIN_PREFIX = "tiny:"
"""``tiny:NAME`` names a built-in tiny model (:mod:`pact.models.tiny`)."""
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


class FirstTokenClock:
    """A stopping criterion that never stops: it notes when the first new token exists.

    ``generate`` calls it after every step, so its first call ends the prefill; timing
    this way costs no extra forward pass.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.first: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.first is None:
            synchronize(self.device)
            self.first = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously)."""
    # Without this a clock reads the launch time of CUDA kernels, not their end.
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


def load(
    path: str,
    device: str | None = None,
    dtype: str = "auto",
    attn: str = "sdpa",
    placement: dict | None = None,
):
    """``(processor, model)`` from a local path or hub id, on ``device`` (default: cuda when
    available) in ``dtype`` (a :data:`DTYPES` name; ``auto``: bfloat16 on cuda, float32 on
    cpu), loaded with the attention implementation ``attn``. A ``placement``
    (``device_map``, e.g. ``auto``, and ``max_memory``) is handed to transformers, which
    places (and may spread) the layers instead."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if path.startswith((".", "~", os.sep)) and not os.path.isdir(path):
        # transformers would call this a malformed hub id; say what was meant.
        raise ValueError(f"--model {path!r}: no such directory")
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if where.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    torch_dtype = DTYPES.get(dtype)
    if torch_dtype is None:  # auto: half precision only where it is fast
        torch_dtype = torch.bfloat16 if where.type == "cuda" else torch.float32
    try:
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=torch_dtype, attn_implementation=attn, **(placement or {})
        )
    except (OSError, ValueError, KeyError, ImportError) as error:
        # transformers says "not a valid model identifier", "unrecognized configuration"
        # or names the missing attention package; prefix the argument it concerns.
        raise ValueError(f"--model {path!r} cannot be loaded: {error}") from error
    if placement:  # transformers placed the layers
        return processor, model.eval()
    return processor, model.to(where).eval()


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
