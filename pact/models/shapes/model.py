"""The quality benchmark's VLM: a stock ``LlavaForConditionalGeneration``, sized for a CPU.

A 2-layer CLIP vision tower reads the 96-px scene in 8-px patches (12 x 12 = 144 visual
tokens); LLaVA's two-layer projector maps them into a Qwen2 decoder of 6 layers, which
reads ``<bos>``, the visual tokens and the question, and answers with one token.
:func:`load` returns the shipped, trained weights; :func:`batch` turns examples into the
model's inputs.
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
from pact.models.shapes.spec import DECODER, GRID, IMAGE_TOKENS, PATCH_PX, VISION, WEIGHTS_NAME

ASSETS = "assets"  # package folder of the shipped weights, config and model card


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
    """A freshly initialised model (what training starts from): transformers' own
    initialisation, except the vision tower's position table, which starts as a 2-D
    sine-cosine grid so that neighbouring patches are alike from the first step."""
    torch.manual_seed(seed)
    config = model_config()
    config._attn_implementation = attn
    model = hf.LlavaForConditionalGeneration(config)
    table = model.model.vision_tower.embeddings.position_embedding.weight
    with torch.no_grad():
        table[0] = 0.0  # the CLS slot, dropped before the projector
        table[1:] = 0.5 * sincos_grid(GRID, table.shape[1])
    _set_generation_defaults(model)
    return model


def sincos_grid(side: int, width: int) -> torch.Tensor:
    """``[side * side, width]`` 2-D sine-cosine position codes in raster order: a quarter
    of the channels each for sin(row), cos(row), sin(column), cos(column) at geometric
    frequencies; channels left over (width not divisible by 4) are zero."""
    quarter = width // 4
    frequencies = 1.0 / (100.0 ** (torch.arange(quarter) / quarter))
    rows, columns = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(),
                                   indexing="ij")  # fmt: skip
    parts = []
    for coordinate in (rows.flatten(), columns.flatten()):
        angles = coordinate[:, None] * frequencies[None]
        parts += [angles.sin(), angles.cos()]
    codes = torch.cat(parts, dim=1)
    return torch.nn.functional.pad(codes, (0, width - codes.shape[1]))


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
    shown = hf.utils.logging.is_progress_bar_enabled()
    hf.utils.logging.disable_progress_bar()  # a 6 MB model: a bar would only be noise
    try:
        model = hf.LlavaForConditionalGeneration.from_pretrained(folder, attn_implementation=attn)
    finally:
        if shown:
            hf.utils.logging.enable_progress_bar()
    _set_generation_defaults(model)
    return model.eval()


def _set_generation_defaults(model: hf.PreTrainedModel) -> None:
    """Greedy one-word answers; the special tokens are never answers."""
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = PAD_ID, BOS_ID, EOS_ID
    gen.suppress_tokens = [PAD_ID, BOS_ID, IMAGE_ID]
    gen.do_sample = False


def pixel_values(images: list[np.ndarray]) -> torch.Tensor:
    """``[B, 3, H, W]`` float32 in [-1, 1] from ``[H, W, 3]`` uint8 images."""
    stacked = torch.from_numpy(np.ascontiguousarray(np.stack(images))).permute(0, 3, 1, 2)
    return stacked.float() / 127.5 - 1.0


def batch(examples: list[Example]) -> dict[str, torch.Tensor]:
    """Model inputs: ``<bos> <image>*144 question``, left-padded to the longest question."""
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


def visual_features(model: hf.LlavaForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    """``[B, 144, hidden]``: the projector's output, the visual tokens the decoder reads."""
    return torch.stack(model.model.get_image_features(pixel_values=pixels).pooler_output)


def answer_logits(model: hf.PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, vocab]`` next-token logits after each question (what greedy decoding reads)."""
    out = model(**inputs, logits_to_keep=1, use_cache=False)
    return out.logits[:, -1]


def card_figures(folder: str | Path | None = None) -> dict:
    """The training record saved next to the weights (``training.json``)."""
    folder = Path(folder) if folder is not None else assets_dir()
    return json.loads((folder / "training.json").read_text(encoding="utf-8"))
