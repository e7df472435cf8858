"""The quality benchmark's VLM: a stock ``LlavaForConditionalGeneration``, sized for a CPU.

A 2-layer CLIP vision tower reads the 96-px scene in 6-px patches (16 x 16 = 256 visual
tokens); a Qwen2-style decoder of 8 layers reads ``<bos>``, the visual tokens and the
question, and answers with one token.  :func:`load` returns the shipped, trained weights;
:func:`batch` turns examples into the model's inputs.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import transformers as hf

from pact.models.shapes.questions import BOS_ID, EOS_ID, IMAGE_ID, PAD_ID, VOCAB, Example
from pact.models.shapes.scenes import IMAGE_PX

PATCH_PX = 6
GRID = IMAGE_PX // PATCH_PX
IMAGE_TOKENS = GRID * GRID
DECODER = dict(layers=8, hidden=128, heads=4, kv_heads=2, intermediate=384)
VISION = dict(layers=2, hidden=96, heads=4, intermediate=256)
ASSETS = "assets"  # package folder of the shipped weights, config and model card
WEIGHTS_NAME = "model.safetensors"


def model_config() -> hf.LlavaConfig:
    """The benchmark model's transformers config (no weights)."""
    vision = hf.CLIPVisionConfig(
        hidden_size=VISION["hidden"],
        intermediate_size=VISION["intermediate"],
        num_hidden_layers=VISION["layers"],
        num_attention_heads=VISION["heads"],
        image_size=IMAGE_PX,
        patch_size=PATCH_PX,
    )
    text = hf.Qwen2Config(
        vocab_size=len(VOCAB),
        hidden_size=DECODER["hidden"],
        intermediate_size=DECODER["intermediate"],
        num_hidden_layers=DECODER["layers"],
        num_attention_heads=DECODER["heads"],
        num_key_value_heads=DECODER["kv_heads"],
        max_position_embeddings=512,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    return hf.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_ID,
        image_seq_length=IMAGE_TOKENS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",  # drop CLS: one token per patch
    )


def new_model(seed: int, attn: str = "sdpa") -> hf.LlavaForConditionalGeneration:
    """A freshly initialised model (what training starts from)."""
    torch.manual_seed(seed)
    model = hf.LlavaForConditionalGeneration(_with_attn(model_config(), attn))
    _set_generation_defaults(model)
    return model


def assets_dir() -> Path:
    """Folder of the shipped weights (``model.safetensors``), config and model card."""
    return Path(str(resources.files("pact.models.shapes").joinpath(ASSETS)))


def load(path: str | Path | None = None, attn: str = "sdpa") -> hf.LlavaForConditionalGeneration:
    """The trained model from ``path`` (a folder from ``save_pretrained``; default: shipped)."""
    folder = Path(path) if path is not None else assets_dir()
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"no {WEIGHTS_NAME} in {folder}: train one with `python -m pact.models.shapes.train`"
        )
    model = hf.LlavaForConditionalGeneration.from_pretrained(folder, attn_implementation=attn)
    _set_generation_defaults(model)
    return model.eval()


def _with_attn(config: hf.LlavaConfig, attn: str) -> hf.LlavaConfig:
    config._attn_implementation = attn
    return config


def _set_generation_defaults(model: hf.PreTrainedModel) -> None:
    """Greedy one-word answers; the special tokens are never answers."""
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = PAD_ID, BOS_ID, EOS_ID
    gen.suppress_tokens = [PAD_ID, BOS_ID, IMAGE_ID]
    gen.do_sample = False


def pixel_values(images: list[np.ndarray]) -> torch.Tensor:
    """``[B, 3, H, W]`` float32 in [-1, 1] from ``[H, W, 3]`` uint8 images."""
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return stacked / 127.5 - 1.0


def batch(examples: list[Example]) -> dict[str, torch.Tensor]:
    """Model inputs: ``<bos> <image>*256 question``, left-padded to the longest question."""
    rows = [[BOS_ID] + [IMAGE_ID] * IMAGE_TOKENS + ex.question_ids for ex in examples]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row)
        attention_mask[i, width - len(row):] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": pixel_values([ex.scene.image for ex in examples]),
    }


def training_batch(groups: list[list[Example]]) -> dict[str, torch.Tensor]:
    """Several questions per scene: ``<bos> <image>*256 q1 ? a1 q2 ? a2 ...``, right-padded.

    Also returns ``answer_at`` (the ``?`` positions, whose next token is an answer; -1 in
    unused slots) and ``answers`` (the answer ids there).  The first question of a row sees
    exactly what evaluation shows, later ones also see the earlier answers.
    """
    rows, slots = [], []
    for group in groups:
        row, at = [BOS_ID] + [IMAGE_ID] * IMAGE_TOKENS, []
        for ex in group:
            row += ex.question_ids
            at.append(len(row) - 1)
            row.append(ex.answer_id)
        rows.append(row[:-1])  # the last answer is only a target
        slots.append(at)
    width, most = max(len(row) for row in rows), max(len(at) for at in slots)
    input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    answer_at = torch.full((len(rows), most), -1, dtype=torch.long)
    answers = torch.full((len(rows), most), -100, dtype=torch.long)
    for i, (row, at, group) in enumerate(zip(rows, slots, groups, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        answer_at[i, : len(at)] = torch.tensor(at)
        answers[i, : len(at)] = torch.tensor([ex.answer_id for ex in group])
    pixels = pixel_values([group[0].scene.image for group in groups])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixels,
            "answer_at": answer_at, "answers": answers}  # fmt: skip


def answer_logits(model: hf.PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, vocab]`` next-token logits after each question (what greedy decoding reads)."""
    out = model(**inputs, logits_to_keep=1, use_cache=False)
    return out.logits[:, -1]


def card_figures(folder: str | Path | None = None) -> dict:
    """The training record saved next to the weights (``training.json``)."""
    folder = Path(folder) if folder is not None else assets_dir()
    return json.loads((folder / "training.json").read_text(encoding="utf-8"))
