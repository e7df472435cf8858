"""A local lmms-eval task (documents in a `datasets` folder, nothing to download) and the
answers a tiny model gives to it, computed without pact's lmms-eval model."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import pact

FAMILY = "qwen2_vl"
TASK_YAML = """task: tiny_vqa
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function tiny_utils.doc_to_visual
doc_to_text: "{{{{question}}}}"
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  until: ["never-written"]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def questions(count: int) -> list[str]:
    return [f"What is in picture {i}?" for i in range(count)]


def noise_images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (32 + 8 * (i % 4), 40, 3), dtype=np.uint8))
        for i in range(count)
    ]


def expected(images, config="pact", new_tokens: int = 3) -> tuple[list[str], int, int]:
    """Answers, visual tokens in and out: each question alone, with a fresh handle."""
    from pact.models.tiny_processor import load_tiny

    processor, model = load_tiny(FAMILY)
    answers, visual_in, visual_out = [], 0, 0
    for image, question in zip(images, questions(len(images)), strict=True):
        content = [{"type": "image"}, {"type": "text", "text": question}]
        text = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        inputs = processor(images=[image], text=[text], return_tensors="pt")
        with pact.attached(model, config) as handle, torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
        new = output[0, inputs["input_ids"].shape[1] :]
        answers.append(processor.tokenizer.decode(new, skip_special_tokens=True).strip())
        visual_in += handle.stats.visual_in
        visual_out += handle.stats.visual_out
    return answers, visual_in, visual_out


def write_task(folder, images, targets, yaml: str = TASK_YAML, name: str = "tiny_vqa") -> None:
    """The task ``name`` in ``folder``: one document per image, its question and target."""
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
        }
    )
    rows = {"image": images, "question": questions(len(images)), "answer": targets}
    data = folder / f"{name}_data"
    datasets.DatasetDict(
        {"test": datasets.Dataset.from_dict(rows, features=features)}
    ).save_to_disk(str(data))
    text = yaml.format(data=data).replace("task: tiny_vqa", f"task: {name}")
    (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    (folder / "tiny_utils.py").write_text(
        "def doc_to_visual(doc):\n    return [doc['image'].convert('RGB')]\n", encoding="utf-8"
    )
