"""Video tokens are visual tokens: counted, reduced, and batched exactly like image tokens."""

from __future__ import annotations

import pytest
import torch
from helpers_hook import TOL, greedy, logits, make_batches, max_row_diff, tiny_model

import pact

pytestmark = pytest.mark.usefixtures("single_thread")

VIDEO_ROWS = [
    ["text:3", "video", "text:4"],
    ["text:2", "image", "text:3", "video", "text:2"],
    ["text:5"],
]


@pytest.mark.parametrize("preset", ["pact", "tome"])
@pytest.mark.parametrize(
    ("family", "text"),
    [
        ("llava_onevision", "qwen2"),
        ("llava_onevision", "mistral"),
        ("qwen2_vl", "qwen2"),
        ("qwen2_5_vl", "qwen2"),
    ],
)
def test_video_tokens_are_reduced(family, text, preset):
    tiny = tiny_model(family, text)
    batches = make_batches(tiny, VIDEO_ROWS, "left")
    ids = batches.batch["input_ids"]
    videos = (ids == tiny.video_token_id).sum(1).tolist()
    images = (ids == tiny.image_token_id).sum(1).tolist()
    assert videos[0] == tiny.video_tokens() and images[0] == 0
    unreduced = logits(tiny, batches.batch)
    with pact.attached(tiny.model, preset) as handle:
        batched = logits(tiny, batches.batch)
        first = handle.stats.last[0]
        alone = [logits(tiny, row) for row in batches.alone]
        video_only = logits(tiny, batches.alone[0])
        generated = greedy(tiny, batches.batch, new_tokens=2)
        alone_generated = greedy(tiny, batches.alone[0], new_tokens=2)
    assert first.visual_in == [v + i for v, i in zip(videos, images, strict=True)]
    assert handle.stats.last[-1].after_merge[0] < videos[0]  # the video-only row shrank
    assert max_row_diff(batched, batches.real, alone) <= TOL
    assert not torch.allclose(video_only[0, -1], unreduced[0, -1], atol=1e-3)
    width = ids.shape[1]
    assert torch.equal(generated.sequences[0, width:], alone_generated.sequences[0, -2:])
