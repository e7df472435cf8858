"""Tiny random-weight VLMs of ``pact.models.tiny``: every family runs forward and cached generate,
and the placeholder counts match what the model's own vision encoders produce."""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers_hook import cache_of

from pact.models.tiny import FAMILIES, FAMILY_TEXTS, TinyVLM, build, build_shaped
from pact.models.tiny_inputs import ANYRES_FAMILIES, QWEN_FAMILIES, VIDEO_FAMILIES

ONE_AND_TWO_IMAGES = [["text:5", "image", "text:3"], ["text:4", "image", "image", "text:2"]]


pytestmark = pytest.mark.usefixtures("single_thread")


def encoded_tokens(tiny: TinyVLM, batch: dict, modality: str) -> int:
    """Feature vectors the model's own ``get_{modality}_features`` yields for the batch."""
    encode = getattr(tiny.model, f"get_{modality}_features")
    names = inspect.signature(encode).parameters
    with torch.no_grad():
        out = encode(**{k: v for k, v in batch.items() if k in names}, return_dict=True)
    pooled = out.pooler_output
    chunks = [pooled] if isinstance(pooled, torch.Tensor) else list(pooled)
    return sum(chunk.shape[:-1].numel() for chunk in chunks)


def placeholder_count(tiny: TinyVLM, batch: dict, token_id: int) -> int:
    """Placeholder tokens of one kind in the batch."""
    return int((batch["input_ids"] == token_id).sum())


def run_and_check(tiny: TinyVLM, prompts: list[list[str]], padding_side: str = "left") -> dict:
    """Forward + 3-token cached greedy generate; placeholder counts match encoder outputs."""
    batch = tiny.inputs(prompts, padding_side=padding_side)
    mask = tiny.visual_mask(batch)
    assert mask.shape == batch["input_ids"].shape and mask.dtype == torch.bool
    images = placeholder_count(tiny, batch, tiny.image_token_id)
    videos = (
        0 if tiny.video_token_id is None else placeholder_count(tiny, batch, tiny.video_token_id)
    )
    assert int(mask.sum()) == images + videos
    if images:
        assert images == encoded_tokens(tiny, batch, "image")
    if videos:
        assert videos == encoded_tokens(tiny, batch, "video")
    with torch.no_grad():
        out = tiny.model(**batch, use_cache=True)
        generated = tiny.model.generate(
            **batch, max_new_tokens=3, do_sample=False, return_dict_in_generate=True
        )
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.logits).all()
    assert cache_of(out) is not None
    width = batch["input_ids"].shape[1]
    assert generated.sequences.shape == (len(prompts), width + 3)
    assert cache_of(generated).get_seq_length() == width + 2  # KV cache used while decoding
    return batch


@pytest.mark.parametrize(("family", "text"), FAMILY_TEXTS)
def test_forward_generate_one_and_two_images(family: str, text: str) -> None:
    tiny = build(family, text=text)
    batch = run_and_check(tiny, ONE_AND_TWO_IMAGES)
    lengths = batch["attention_mask"].sum(1)
    assert lengths[0] != lengths[1]
    assert batch["attention_mask"][int(lengths.argmin()), 0] == 0  # shorter row is left-padded
    per_row = tiny.visual_mask(batch).sum(1).tolist()
    assert per_row == [tiny.image_tokens(), 2 * tiny.image_tokens(multi_image=True)]


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_without_images_and_right_padding(family: str) -> None:
    tiny = build(family, layers=2, attn="eager")
    batch = run_and_check(tiny, [["text:3", "image", "text:6"], ["text:4"]], padding_side="right")
    assert batch["attention_mask"][1, -1] == 0
    assert tiny.visual_mask(batch)[1].sum() == 0
    text_only = tiny.inputs([["text:3"], ["text:5"]])
    assert set(text_only) <= {"input_ids", "attention_mask", "mm_token_type_ids"}
    with torch.no_grad():
        tiny.model.generate(**text_only, max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_rows(family: str) -> None:
    tiny = build(family, layers=2)
    batch = run_and_check(tiny, [["text:3", "video", "text:2"], ["text:2", "image", "text:4"]])
    assert tiny.visual_mask(batch)[0].sum() == tiny.video_tokens()
    run_and_check(tiny, [["text:2", "video:6", "image", "video:6", "text:1"]])


@pytest.mark.parametrize("family", ANYRES_FAMILIES + QWEN_FAMILIES)
def test_image_sizes_match_encoder(family: str) -> None:
    tiny = build(family, layers=1)
    sizes = [(32, 32), (32, 80), (80, 32), (40, 64), (64, 40), (96, 96), (20, 100), (128, 128)]
    for height, width in sizes:
        batch = tiny.inputs([[f"image:{height}x{width}", "text:2"]])
        expected = tiny.image_tokens((height, width))
        assert placeholder_count(tiny, batch, tiny.image_token_id) == expected
        assert encoded_tokens(tiny, batch, "image") == expected, (height, width)


@pytest.mark.parametrize("family", ["llava_next", "qwen2_5_vl"])
def test_eager_and_sdpa_agree(family: str) -> None:
    eager, sdpa = build(family, attn="eager", layers=2), build(family, attn="sdpa", layers=2)
    assert eager.model.config.text_config._attn_implementation == "eager"
    assert sdpa.model.config.vision_config._attn_implementation == "sdpa"
    batch = eager.inputs(ONE_AND_TWO_IMAGES)
    real = batch["attention_mask"].bool()  # padded positions differ between kernels
    with torch.no_grad():
        expected = eager.model(**batch).logits[real]
        actual = sdpa.model(**batch).logits[real]
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_qwen_mm_token_types_and_wrappers() -> None:
    tiny = build("qwen2_vl", layers=1)
    batch = tiny.inputs([["text:2", "image", "image", "video", "text:1"]])
    ids, types = batch["input_ids"][0], batch["mm_token_type_ids"][0]
    assert torch.equal(types == 1, ids == tiny.image_token_id)
    assert torch.equal(types == 2, ids == tiny.video_token_id)
    start, end = tiny.layout.wrap_ids
    assert int((ids == start).sum()) == int((ids == end).sum()) == 3


def test_deterministic_given_seed() -> None:
    first = build("llava_onevision", seed=3, layers=2)
    second = build("llava_onevision", seed=3, layers=2)
    other = build("llava_onevision", seed=4, layers=2)
    batch = first.inputs(ONE_AND_TWO_IMAGES, seed=7)
    again = second.inputs(ONE_AND_TWO_IMAGES, seed=7)
    assert all(torch.equal(batch[name], again[name]) for name in batch)
    assert not torch.equal(
        batch["input_ids"], first.inputs(ONE_AND_TWO_IMAGES, seed=8)["input_ids"]
    )
    with torch.no_grad():
        logits = first.model(**batch).logits
        assert torch.equal(logits, second.model(**batch).logits)
        assert not torch.equal(logits, other.model(**batch).logits)


def test_token_ids_and_dtype() -> None:
    tiny = build("llava_next", vocab=128, dtype=torch.bfloat16)
    batch = tiny.inputs([["text:50", "image"]])
    text = batch["input_ids"][~tiny.visual_mask(batch)]
    assert text.min() > 2 and text.max() < 128 - 4  # specials: 0-2 and the top 4 ids
    assert tiny.image_token_id == 127 and tiny.video_token_id is None
    assert batch["pixel_values"].dtype == torch.bfloat16
    with torch.no_grad():
        assert tiny.model(**batch).logits.dtype == torch.bfloat16


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="text must be one of"):
        build("qwen2_vl", text="llama")
    with pytest.raises(ValueError, match="family must be one of"):
        build("blip")
    tiny = build("llava", layers=1)
    with pytest.raises(ValueError, match="bad prompt item"):
        tiny.inputs([["text"]])
    with pytest.raises(ValueError, match="takes no video"):
        tiny.inputs([["video"]])
    with pytest.raises(ValueError, match="padding_side"):
        tiny.inputs([["text:2"]], padding_side="middle")


def test_build_shaped_hits_token_target() -> None:
    shape = {"layers": 2, "hidden": 128, "heads": 4, "kv_heads": 2, "intermediate": 256}
    tiny = build_shaped({**shape, "vocab": 512}, "llava_onevision", image_tokens=300)
    assert abs(tiny.image_tokens() - 300) <= 30
    assert tiny.model.config.text_config.num_hidden_layers == 2
    run_and_check(tiny, [["text:4", "image", "text:2"]])
