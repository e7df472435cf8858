"""lmms-eval requests built by hand for the `pact` model, and the answers computed without
it (the processor and `model.generate` called directly)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

TASK, SPLIT = "tiny_task", "test"
FAMILY, SEED = "qwen2_vl", 0  # this seed's random answers differ from image to image
GEN_KWARGS = {"max_new_tokens": 5, "until": ["\x00never"]}


def noise_images(count: int) -> list[Image.Image]:
    """Images of different sizes (so rows pad differently) and contents."""
    rng = np.random.default_rng(0)
    shapes = [(32 + 8 * i, 40 + 4 * (i % 2)) for i in range(count)]
    return [Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)) for hw in shapes]


DOCS = [
    {"image": image, "question": f"What is in picture {i}?"}
    for i, image in enumerate(noise_images(4))
]


def doc_to_visual(doc):
    return [doc["image"]]


def requests(kind: str = "generate_until", second=GEN_KWARGS, docs=DOCS):
    """One request per document; ``second`` (gen kwargs or continuation) may be per document."""
    from lmms_eval.api.instance import Instance

    seconds = second if isinstance(second, list) else [second] * len(docs)
    return [
        Instance(
            kind,
            (doc["question"], extra, doc_to_visual, i, TASK, SPLIT),
            idx=i,
            metadata={"task": TASK, "doc_id": i, "repeats": 1},
        )
        for i, (doc, extra) in enumerate(zip(docs, seconds, strict=True))
    ]


def wrapper(config="pact", batch_size=1, family=FAMILY, **kwargs):
    from pact.eval.lmms import PactLMM

    model = PactLMM(
        f"tiny:{family}", config, batch_size=batch_size, device="cpu", seed=SEED, **kwargs
    )
    model.task_dict = {TASK: {SPLIT: DOCS}}
    return model


def direct_inputs(processor, doc, text_after: str = ""):
    """The processor on the chat-templated question, written here without the wrapper."""
    content = [{"type": "image"}, {"type": "text", "text": doc["question"]}]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    return processor(images=[doc["image"]], text=[prompt + text_after], return_tensors="pt")


def direct_answer(model, processor, doc, new_tokens=5) -> tuple[str, list[int]]:
    inputs = direct_inputs(processor, doc)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    return processor.tokenizer.decode(tokens, skip_special_tokens=True).strip(), tokens
