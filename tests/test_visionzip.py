"""VisionZip, a stage on the vision side, against its definition written here.

The reference recomputes the tower layer's attention and keys from the stock modules' weights,
selects the dominant tokens and builds the contextual ones with numpy and Python loops, runs
the stock projector on them, and predicts exactly what the language model's first layer must
receive; the test reads that from a hook placed after pact's.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import sys

import numpy as np
import pytest
import torch
import transformers as hf
from helpers_hook import greedy, logits, make_batches, max_row_diff, tiny_model

import pact
from pact.hooks import families

pytestmark = pytest.mark.usefixtures("single_thread")

DOMINANT, CONTEXTUAL = 5, 3
ANYRES = ("llava_next", "llava_onevision")
SUPPORTED = ("llava", "llava_siglip", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl")


def config(proportional: bool = True, **stage) -> dict:
    recycling = {"fraction": 1.0, "clusterer": {"name": "visionzip", "clusters": CONTEXTUAL}}
    return {
        "stages": [
            {
                "place": "vision",
                "scorer": "visionzip",
                "keep_tokens": DOMINANT,
                "recycling": recycling,
                "cluster_on": "keys_mean",
                "merger": "visionzip",
                "proportional_attention": proportional,
                **stage,
            }
        ]
    }


def siglip_llava():
    """The tiny LLaVA with a 2-layer SigLIP tower (no [CLS]), read at its first layer."""
    tiny = tiny_model("llava")
    clip = tiny.model.config.vision_config
    vision = hf.SiglipVisionConfig(
        hidden_size=clip.hidden_size,
        intermediate_size=clip.intermediate_size,
        num_hidden_layers=2,
        num_attention_heads=clip.num_attention_heads,
        image_size=clip.image_size,
        patch_size=clip.patch_size,
    )
    settings = tiny.model.config.to_dict()
    settings.update(vision_feature_layer=-2, vision_feature_select_strategy="full")
    settings.pop("vision_config")
    settings["text_config"] = tiny.model.config.text_config
    llava_config = hf.LlavaConfig(vision_config=vision, **settings)
    torch.manual_seed(1)
    model = hf.LlavaForConditionalGeneration(llava_config).eval()
    return dataclasses.replace(tiny, model=model)


def build(family: str):
    return siglip_llava() if family == "llava_siglip" else tiny_model(family)


def visionzip_image(score, metric, features, dominant=DOMINANT, contextual=CONTEXTUAL):
    """{token index: feature} that VisionZip keeps of one image (numpy, by definition)."""
    score, metric, features = (np.asarray(a, dtype=np.float64) for a in (score, metric, features))
    n = len(score)
    ranked = sorted(range(n), key=lambda i: (-score[i], i))
    kept = {i: features[i] for i in sorted(ranked[:dominant])}
    rest = [i for i in range(n) if i not in kept]
    if not rest:
        return kept
    unit = metric[rest] / np.linalg.norm(metric[rest], axis=1, keepdims=True)
    step = max(1, len(rest) // contextual)
    targets = list(range(0, len(rest), step))[:contextual]
    others = [j for j in range(len(rest)) if j not in targets]
    nearest = (unit[others] @ unit[targets].T).argmax(axis=1) if others else []
    for t, target in enumerate(targets):
        members = [rest[others[o]] for o in range(len(others)) if nearest[o] == t]
        extra = features[members].mean(axis=0) if members else 0.0
        kept[rest[target]] = features[rest[target]] + extra
    return dict(sorted(kept.items()))


def tower_signals(model, pixel_values):
    """Per tower row (image or crop): VisionZip's score ([CLS] row summed over heads, or the
    attention received averaged over heads and queries) and metric (head-mean keys) of the
    tokens sent on, from the stock modules' weights; and the tower's output."""
    tower = model.model.vision_tower
    vision = getattr(tower, "vision_model", tower)
    settings = model.config
    out = tower(pixel_values, output_hidden_states=True)
    n_layers = len(vision.encoder.layers)
    index = settings.vision_feature_layer % (n_layers + 1) - 1
    layer = vision.encoder.layers[index]
    normed = layer.layer_norm1(out.hidden_states[index])
    batch, tokens, _ = normed.shape
    heads = layer.self_attn.num_heads
    q = layer.self_attn.q_proj(normed).view(batch, tokens, heads, -1)
    k = layer.self_attn.k_proj(normed).view(batch, tokens, heads, -1)
    probs = (torch.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5).softmax(-1)
    drop = 1 if settings.vision_feature_select_strategy == "default" else 0
    if hasattr(vision.embeddings, "class_embedding"):
        score = probs[:, :, 0, drop:].sum(dim=1)
    else:
        score = probs.mean(dim=(1, 2))[:, drop:]
    return (
        score,
        k.mean(dim=2)[:, drop:],
        out.hidden_states[settings.vision_feature_layer][:, drop:],
    )


def llava_reference(model, pixel_values):
    """Per image, {token: feature before the projector} as VisionZip defines them."""
    score, metric, features = tower_signals(model, pixel_values)
    n = features.shape[1]
    return [
        (visionzip_image(score[b], metric[b], features[b]), n) for b in range(features.shape[0])
    ]


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def qwen_reference(model, pixel_values, grid_thw):
    """Per image, {LLM token: its 2x2 patches' features, flattened} as VisionZip defines them
    (Qwen-VL has no [CLS]: the attention each patch receives, summed over a token's patches)."""
    visual = model.model.visual
    block = visual.blocks[len(visual.blocks) - 1]
    seen = {}
    hooks = [
        block.attn.register_forward_pre_hook(
            lambda m, a, kw: seen.update(x=a[0], **kw), with_kwargs=True
        ),
        visual.merger.register_forward_pre_hook(lambda m, a: seen.update(features=a[0])),
    ]
    try:
        visual(pixel_values, grid_thw=grid_thw)
    finally:
        for hook in hooks:
            hook.remove()
    x, (cos, sin), segments = seen["x"], seen["position_embeddings"], seen["cu_seqlens"]
    heads = block.attn.num_heads
    qkv = block.attn.qkv(x).reshape(x.shape[0], 3, heads, -1)
    cos, sin = cos[:, None].float(), sin[:, None].float()
    q = qkv[:, 0] * cos + rotate_half(qkv[:, 0]) * sin
    k = qkv[:, 1] * cos + rotate_half(qkv[:, 1]) * sin
    received = torch.zeros(x.shape[0])
    bounds = segments.tolist()
    for start, end in itertools.pairwise(bounds):
        logits_ = torch.einsum("qhd,khd->hqk", q[start:end], k[start:end]) * q.shape[-1] ** -0.5
        received[start:end] = logits_.softmax(-1).mean(dim=(0, 1))
    unit = visual.spatial_merge_size**2
    n_units = x.shape[0] // unit
    llm_order = torch.arange(n_units)
    if hasattr(visual, "window_size"):
        module = sys.modules[type(visual).__module__]
        window_index, _ = module.get_vision_window_index(
            grid_thw, spatial_merge_size=visual.spatial_merge_size,
            window_size=visual.window_size, patch_size=visual.patch_size,
        )  # fmt: skip
        llm_order = torch.argsort(window_index)  # the model's own reordering after the merger
    score = received.view(n_units, unit).sum(1)[llm_order]
    metric = k.view(n_units, unit, heads, -1).mean(dim=2).reshape(n_units, -1)[llm_order]
    features = seen["features"].reshape(n_units, -1)[llm_order]
    images, start = [], 0
    for count in (grid_thw.prod(dim=1) // unit).tolist():
        span = slice(start, start + count)
        images.append((visionzip_image(score[span], metric[span], features[span]), count))
        start += count
    return images


def anyres_reference(model, batch: dict):
    """LLaVA-NeXT/OneVision: per image, {LLM position: feature before the projector} as
    VisionZip defines them over the image's tokens in the language model's order, and the
    newline tokens the model adds ({position: embedding})."""
    inner = model.model
    seen = {}
    hooks = [
        inner.vision_tower.register_forward_pre_hook(lambda m, a: seen.update(pixels=a[0])),
        inner.multi_modal_projector.register_forward_pre_hook(
            lambda m, a: seen.update(features=a[0])
        ),
    ]
    original = inner.pack_image_features

    def recording(features, image_sizes, *args, **kwargs):
        seen.update(crops=[len(f) for f in features], sizes=image_sizes, args=args, kw=kwargs)
        return original(features, image_sizes, *args, **kwargs)

    inner.pack_image_features = recording
    try:
        model(**batch)
    finally:
        del inner.pack_image_features
        for hook in hooks:
            hook.remove()
    score, metric, _ = tower_signals(model, seen["pixels"])
    crops = score.shape[0]
    score, metric = score.reshape(-1), metric.reshape(-1, metric.shape[-1])
    features = seen["features"].reshape(-1, seen["features"].shape[-1])
    positions = torch.arange(1, len(features) + 1, dtype=torch.float64)[:, None]
    packed, lengths = original(
        torch.split(positions.view(crops, -1, 1), seen["crops"]), seen["sizes"],
        *seen["args"], **{**seen["kw"], "image_newline": torch.zeros(1, dtype=torch.float64)},
    )  # fmt: skip
    packed = torch.cat(list(packed)) if isinstance(packed, (list, tuple)) else packed
    images, start = [], 0
    for length in [int(n) for n in lengths]:
        layout = packed[start : start + length, 0].long() - 1
        ids = layout[layout >= 0]
        at = torch.nonzero(layout >= 0).flatten().tolist()
        chosen = visionzip_image(score[ids], metric[ids], features[ids])
        newlines = {p: inner.image_newline for p in range(length) if layout[p] < 0}
        images.append(({at[j]: value for j, value in chosen.items()}, length, newlines))
        start += length
    return images


def projected(model, family: str, images: list) -> list[torch.Tensor]:
    """The stock projector (LLaVA's, or Qwen-VL's merger) applied to the kept features."""
    rows = []
    for image, *_ in images:
        stacked = torch.tensor(np.stack(list(image.values())), dtype=torch.float32)
        if family.startswith("qwen"):
            merger = model.model.visual.merger
            rows.append(merger(stacked.reshape(-1, stacked.shape[1] // 4)))
        else:
            rows.append(model.model.multi_modal_projector(stacked))
    return rows


def expected_layer0(model, family: str, batch: dict) -> torch.Tensor:
    """``[M, D]`` what the first decoder layer must receive for a one-row batch."""
    with torch.no_grad():
        if family.startswith("qwen"):
            images = qwen_reference(model, batch["pixel_values"], batch["image_grid_thw"])
        elif family in ("llava_next", "llava_onevision"):
            images = anyres_reference(model, batch)
        else:
            images = llava_reference(model, batch["pixel_values"])
        features = projected(model, family, images)
        ids = batch["input_ids"][0]
        embeds = model.get_input_embeddings()(ids)
    image_slots = torch.nonzero(ids == model.config.image_token_id).flatten().tolist()
    keep = [s for s in range(len(ids)) if s not in image_slots]
    offset = 0
    for (image, length, *extras), rows in zip(images, features, strict=True):
        for token, row in zip(image, rows, strict=True):
            embeds[image_slots[offset + token]] = row
            keep.append(image_slots[offset + token])
        for position, row in (extras[0] if extras else {}).items():
            embeds[image_slots[offset + position]] = row
            keep.append(image_slots[offset + position])
        offset += length
    assert offset == len(image_slots)
    return embeds[sorted(keep)]


def layer0_input(model, run) -> torch.Tensor:
    """What decoder layer 0 received in ``run()`` (a hook placed after pact's)."""
    seen = []
    layer = families.find_decoder(model).layers[0]
    hook = layer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(a[0] if a else kw["hidden_states"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            run()
    finally:
        hook.remove()
    return seen[0]


ROW = [["text:3", "image", "text:4"]]
TWO_IMAGES = [["text:2", "image", "text:2", "image", "text:3"]]


TWO_SIZES = [["text:2", "image", "text:2", "image:32x48", "text:3"]]  # the smaller last


@pytest.mark.parametrize(
    "rows", [ROW, TWO_IMAGES, TWO_SIZES], ids=["one image", "two images", "two sizes"]
)
@pytest.mark.parametrize("family", SUPPORTED)
def test_what_the_language_model_receives_is_visionzips_definition(family, rows):
    tiny = build(family)
    batch = tiny.inputs(rows)
    expected = expected_layer0(tiny.model, family, batch)
    with pact.attached(tiny.model, config()) as handle:
        received = layer0_input(tiny.model, lambda: tiny.model(**batch))
        stats = handle.stats.last[0]
    assert received.shape[1] == expected.shape[0]
    torch.testing.assert_close(received[0], expected, atol=2e-5, rtol=1e-4)
    images = sum(item.startswith("image") for item in rows[0])
    text = int((batch["input_ids"][0] != tiny.model.config.image_token_id).sum())
    assert stats.after_prune[0] == DOMINANT * images
    assert stats.after_merge[0] == expected.shape[0] - text
    if family not in ANYRES:  # any-resolution images also keep the model's newline tokens
        assert stats.after_merge[0] == (DOMINANT + CONTEXTUAL) * images


SMALL = ["stages.0.keep_tokens=5", "stages.0.recycling.clusterer.clusters=3"]
ROWS = [["text:3", "image", "text:4"], ["text:2", "image", "text:1", "image", "text:5"],
        ["text:6"]]  # fmt: skip


@pytest.mark.parametrize("family", SUPPORTED)
def test_batch_rows_equal_rows_alone_and_detach_restores_the_model(family):
    tiny = build(family)
    batches = make_batches(tiny, ROWS, ("left", "right")[SUPPORTED.index(family) % 2])
    untouched = logits(tiny, batches.batch)
    with pact.attached(tiny.model, "visionzip", overrides=SMALL) as handle:
        batched = logits(tiny, batches.batch)
        stats = handle.stats.last[0]
        alone = [logits(tiny, row) for row in batches.alone]
    assert max_row_diff(batched, batches.real, alone) <= 1e-4
    assert stats.after_prune == [5, 10, 0]
    if family not in ANYRES:  # (any-resolution images keep the model's newline tokens too)
        assert stats.after_merge == [8, 16, 0]
    assert (batched - untouched)[batches.real].abs().max() > 1e-4
    assert torch.equal(logits(tiny, batches.batch), untouched)


@pytest.mark.parametrize("family", ["llava", "llava_onevision", "qwen2_5_vl"])
def test_generate_with_the_cache_batch_rows_equal_rows_alone(family):
    tiny = build(family)
    batches = make_batches(tiny, ROWS[:2], "left")
    with pact.attached(tiny.model, "visionzip", overrides=SMALL):
        batched = greedy(tiny, batches.batch)
        alone = [greedy(tiny, row) for row in batches.alone]
    for row, single in enumerate(alone):
        for step, step_logits in enumerate(single.logits):
            diff = (batched.logits[step][row] - step_logits[0]).abs().max()
            assert diff <= 1e-4, (row, step)


def test_the_tower_layer_read_is_the_one_asked():
    tiny = build("llava_siglip")  # 2 tower layers; LLaVA reads layer 0's output
    batch = tiny.inputs(ROW)
    seen = {}
    for tower_layer in (None, 0, 1, -1):
        with pact.attached(tiny.model, config(tower_layer=tower_layer)):
            seen[tower_layer] = layer0_input(tiny.model, lambda: tiny.model(**batch))
    assert torch.equal(seen[None], seen[0]) and torch.equal(seen[1], seen[-1])
    assert not torch.equal(seen[0], seen[1])


def test_unsupported_models_and_videos_are_refused_before_any_work(tiny_decoder_config):
    text_model = hf.Qwen2ForCausalLM(tiny_decoder_config("qwen2")).eval()
    with pytest.raises(
        ValueError,
        match=r"LLaVA-1\.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2\.5-VL; "
        r"not in Qwen2ForCausalLM",
    ):
        pact.attach(text_model, "visionzip", visual_token_ids=[5])
    assert pact.handle_of(text_model) is None
    qwen = tiny_model("qwen2_vl")
    batch = qwen.inputs([["text:2", "video", "text:3"]])
    with pact.attached(qwen.model, "visionzip"):
        with pytest.raises(ValueError, match="videos"):
            qwen.model(**batch)
        with pytest.raises(ValueError, match="videos"):
            greedy(qwen, batch, new_tokens=1)
    with pytest.raises(ValueError, match="tower_layer: layer 3 is out of range"):
        pact.attach(qwen.model, config(tower_layer=3))


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"layer": 2, "scorer": "visionzip"}], "reads the vision tower's attention: set place"),
        ([{"layer": 1, "scorer": "euti"}, {"place": "vision", "scorer": "visionzip"}],
         "place: vision must be the first stage"),
        ([{"place": "vision", "layer": 2, "scorer": "visionzip"}], "layer must be 0 or unset"),
        ([{"layer": 2, "scorer": "euti", "tower_layer": 1}], "tower_layer applies to place"),
        ([{"place": "vision", "scorer": "visionzip", "position_mode": "mean"}],
         "position_mode must be keep"),
        ([{"layer": 2, "scorer": "euti", "recycling": {"clusterer": "visionzip"},
           "retrieval": True, "clusterer": {"name": "dbdpc"}}], "choose one"),
        ([{"layer": 2, "recycling": {"clusterer": "visionzip"}}], "needs a scorer"),
    ],
)  # fmt: skip
def test_config_rules_name_what_is_wrong(stages, message):
    with pytest.raises(pact.ConfigError, match=message):
        pact.PactConfig.load({"stages": stages})


@pytest.mark.parametrize("family", ["llava_siglip", "qwen2_5_vl"])
def test_attention_formed_a_few_queries_at_a_time_is_the_same(family, monkeypatch):
    from pact.hooks import towers

    monkeypatch.setattr(towers, "QUERY_CHUNK", 3)  # many chunks, a ragged last one
    tiny = build(family)
    batch = tiny.inputs(ROW)
    expected = expected_layer0(tiny.model, family, batch)
    with pact.attached(tiny.model, config()):
        received = layer0_input(tiny.model, lambda: tiny.model(**batch))
    torch.testing.assert_close(received[0], expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "llava_next"])
def test_beam_search_repeats_each_rows_plan_and_rows_equal_rows_alone(family):
    """generate repeats each row for its beams after encoding the images once."""
    tiny = build(family)
    batches = make_batches(tiny, ROWS[:2], "left")
    options = {"num_beams": 2, "num_return_sequences": 2}
    with pact.attached(tiny.model, "visionzip", overrides=SMALL) as handle:
        batched = greedy(tiny, batches.batch, **options)
        stats = handle.stats.last[0]
        alone = [greedy(tiny, row, **options) for row in batches.alone]
    assert stats.after_prune == [5, 5, 10, 10]
    for row, single in enumerate(alone):
        for beam in range(2):
            mine = batched.sequences[2 * row + beam, -4:]
            assert torch.equal(mine, single.sequences[beam, -4:]), (row, beam)


def test_chunked_prefill_is_refused_before_the_tower_runs():
    tiny = build("llava")
    batch = tiny.inputs(ROW)
    attached = pact.attached(tiny.model, "visionzip", overrides=SMALL)
    with attached, pytest.raises(ValueError, match="prefill_chunk_size"):
        greedy(tiny, batch, new_tokens=1, prefill_chunk_size=4)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_next"])
def test_a_deep_copy_has_its_own_vision_stage(family):
    tiny = build(family)
    batch = tiny.inputs(TWO_SIZES)
    untouched = logits(tiny, batch)
    handle = pact.attach(tiny.model, "visionzip", overrides=SMALL)
    reduced = logits(tiny, batch)
    clone = dataclasses.replace(tiny, model=copy.deepcopy(tiny.model))
    copied = pact.handle_of(clone.model)
    assert copied is not None and copied is not handle
    handle.detach()
    assert torch.equal(logits(clone, batch), reduced)  # the copy still reduces, on its own
    assert torch.equal(logits(tiny, batch), untouched)
    copied.detach()
    assert torch.equal(logits(clone, batch), untouched)
    assert "get_image_features" not in vars(clone.model.model)


def test_a_users_own_get_image_features_keeps_running_and_comes_back():
    tiny = build("llava_onevision")
    inner = tiny.model.model
    calls = []

    def mine(*args, **kwargs):
        calls.append(1)
        return type(inner).get_image_features(inner, *args, **kwargs)

    inner.get_image_features = mine
    batch = tiny.inputs(ROW)
    with pact.attached(tiny.model, "visionzip", overrides=SMALL):
        logits(tiny, batch)
    assert calls == [1] and vars(inner)["get_image_features"] is mine


@pytest.mark.parametrize(
    ("family", "scorer"), [("llava_next", "attention"), ("llava", "euti"), ("qwen2_vl", "euti")]
)
def test_scorers_that_read_queries_get_the_towers_or_a_clear_error(family, scorer):
    tiny = build(family)
    batch = tiny.inputs(ROW)
    stage = {"stages": [{"place": "vision", "scorer": scorer, "keep_tokens": 5}]}
    with pact.attached(tiny.model, stage) as handle:
        if family.startswith("qwen"):
            with pytest.raises(ValueError, match="no query of their own"):
                logits(tiny, batch)
            return
        seen = {}
        pipeline = handle.vision_pipeline

        def spy(inputs):
            seen["queries"], seen["keys"] = inputs.qk.get(rotary=False)
            return pipeline(inputs)

        handle.vision_pipeline = spy
        logits(tiny, batch)
    assert not torch.equal(seen["queries"], seen["keys"])
