"""The newer families of the table: Mistral 3 (a sliding-window Mistral decoder behind a
Pixtral tower), Qwen3-VL (DeepStack: visual features added to the hidden states after the
first decoder layers) and Gemma 3 (refused: bidirectional attention within an image).

Their tiny models are built here from transformers configs (``pact.models.tiny`` builds
the families whose processors it reproduces); visual tokens are laid out as the model's
forward expects them (one placeholder per merged patch)."""

from __future__ import annotations

import pytest
import torch
import transformers as hf
from conftest import TINY_DECODER

import pact
from pact.hooks import families
from pact.models.tiny_inputs import takes_token_types

pytestmark = pytest.mark.usefixtures("single_thread")

DECODER = TINY_DECODER | {"vocab_size": 256}
IMAGE, VIDEO, START, END = 255, 254, 253, 252
WINDOW = 8
PATCHES = 8  # patches per image side (patch 4 on a 32-pixel image)
MERGED = (PATCHES // 2) ** 2  # visual tokens per image after the 2x2 merge
GENERATE = dict(
    max_new_tokens=4, min_new_tokens=4, do_sample=False, return_dict_in_generate=True,
    output_logits=True, pad_token_id=0, suppress_tokens=[IMAGE, VIDEO, START, END],
)  # fmt: skip


def mistral3(window: int | None = WINDOW):
    torch.manual_seed(0)
    vision = hf.PixtralVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=4, head_dim=16,
    )  # fmt: skip
    text = hf.MistralConfig(**DECODER, sliding_window=window)
    config = hf.Mistral3Config(
        vision_config=vision, text_config=text, image_token_index=IMAGE, spatial_merge_size=2
    )
    model = hf.Mistral3ForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.cat(
        [
            torch.randint(3, 200, (2, 5), generator=generator),
            torch.full((2, MERGED), IMAGE),
            torch.randint(3, 200, (2, 9), generator=generator),
        ],
        dim=1,
    )
    pixels = torch.randn(2, 3, 32, 32, generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
    batch["image_sizes"] = torch.tensor([[32, 32], [32, 32]])
    return model, batch


def qwen3_vl(deepstack: list[int]):
    torch.manual_seed(0)
    vision = dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4,
        spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=DECODER["hidden_size"],
        num_position_embeddings=64, deepstack_visual_indexes=deepstack,
    )  # fmt: skip
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
    text = DECODER | {"head_dim": 16, "rope_parameters": rope | {"mrope_interleaved": True}}
    # Sub-configs as dicts: transformers 5.0 drops sub-config objects given to this class.
    config = hf.Qwen3VLConfig(
        text_config=text, vision_config=vision, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=START, vision_end_token_id=END,
    )  # fmt: skip
    model = hf.Qwen3VLForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(1)
    row = torch.cat(
        [
            torch.randint(3, 200, (5,), generator=generator),
            torch.tensor([START]),
            torch.full((MERGED,), IMAGE),
            torch.tensor([END]),
            torch.randint(3, 200, (6,), generator=generator),
        ]
    )
    ids = row[None]
    types = (ids == IMAGE).long()
    pixels = torch.randn(PATCHES**2, 3 * 2 * 4 * 4, generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if takes_token_types():
        batch["mm_token_type_ids"] = types
    batch |= {"pixel_values": pixels, "image_grid_thw": torch.tensor([[1, PATCHES, PATCHES]])}
    return model, batch


def compare(model, batch, config) -> tuple[float, bool, float, list[int]]:
    """Prefill and greedy-step logit differences to the stock model, whether the greedy
    sequences agree, and the first stage's visual tokens left per row."""
    with torch.no_grad():
        stock = model(**batch).logits
        stock_out = model.generate(**batch, **GENERATE)
        with pact.attached(model, config) as handle:
            hooked = model(**batch).logits
            out = model.generate(**batch, **GENERATE)
    steps = zip(out.logits, stock_out.logits, strict=True)
    return (
        (hooked - stock).abs().max().item(),
        torch.equal(out.sequences, stock_out.sequences),
        max((ours - theirs).abs().max().item() for ours, theirs in steps),
        handle.stats.last[0].after_merge,
    )


def test_mistral3_with_a_window_shorter_than_the_prompt():
    model, batch = mistral3()
    assert batch["input_ids"].shape[1] > 2 * WINDOW
    prefill, same, steps, visual = compare(model, batch, {"stages": [{"layer": 2}]})
    assert prefill <= 1e-5 and same and steps <= 1e-5 and visual == [MERGED, MERGED]
    prefill, _, _, visual = compare(model, batch, pact.PactConfig.load("pact", ["layer=2"]))
    assert prefill > 1e-4 and all(kept < MERGED for kept in visual)  # it did reduce


def test_qwen3_vl_stage_after_the_deepstack_layers():
    model, batch = qwen3_vl(deepstack=[0, 1])
    assert families.injected_layers(model) == 2
    prefill, same, steps, visual = compare(model, batch, {"stages": [{"layer": 2}]})
    assert prefill <= 1e-5 and same and steps <= 1e-5 and visual == [MERGED]
    prefill, _, _, visual = compare(model, batch, pact.PactConfig.load("pact", ["layer=3"]))
    assert prefill > 1e-4 and visual[0] < MERGED


@pytest.mark.parametrize("layer", [0, 1])
def test_qwen3_vl_stage_before_the_deepstack_layers_is_refused(layer):
    model, _ = qwen3_vl(deepstack=[0, 1])
    message = rf"layer {layer} is too early for Qwen3-VL.*after decoder layers 0..1.*layer 2"
    with pytest.raises(ValueError, match=message):
        pact.attach(model, "pact", overrides=[f"layer={layer}"])
    assert pact.handle_of(model) is None
    assert model.get_decoder().config._attn_implementation == "sdpa"


def test_gemma3_vlm_is_refused_with_the_reason():
    text = hf.Gemma3TextConfig(**DECODER, head_dim=16, sliding_window=WINDOW)
    vision = hf.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=4,
    )  # fmt: skip
    config = hf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=16)
    model = hf.Gemma3ForConditionalGeneration(config).eval()
    with pytest.raises(TypeError, match="Gemma 3 lets the tokens of one image attend"):
        pact.attach(model, "pact")
    assert pact.handle_of(model) is None


def test_the_models_page_is_generated_from_the_table():
    """One row per family, and the page holds the marker the docs build replaces."""
    from pathlib import Path

    table = families.models_table().splitlines()
    assert len(table) == 2 + len(families.VLM_FAMILIES)
    for family in families.VLM_FAMILIES.values():
        assert any(f"| {family.label} | `{family.model_class}` |" in row for row in table)
    page = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    assert "<!-- families table: generated from pact/hooks/families.py -->" in page
    assert "| family | class |" not in page  # never written by hand


def test_this_transformers_is_in_the_declared_range():
    """The suite runs on a transformers that pyproject.toml accepts; .ci/run runs these hook
    tests again on the lowest release it accepts, so the declared range is the tested one."""
    import re
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parents[1]
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    requirement = Requirement(re.search(r'"(transformers[^"]*)"', text).group(1))
    assert requirement.specifier.contains(Version(hf.__version__))
    ci = (root / ".ci" / "run").read_text(encoding="utf-8")
    assert "transformers==$lowest" in ci and "tests/test_hook_*.py" in ci
