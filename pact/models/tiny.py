"""Tiny random-weight vision-language models for pact's tests, commands and benchmarks.

Everything is built from transformers config classes (no download): ``build`` makes a
model small enough for a CPU forward in milliseconds, ``build_shaped`` keeps a real
decoder shape (e.g. :data:`QWEN2_0_5B_SHAPE`) behind a tiny vision tower.  Both return a
:class:`TinyVLM` whose :meth:`TinyVLM.inputs` builds processor-exact batches by hand::

    tiny = build("llava_onevision", text="llama")
    batch = tiny.inputs([["text:5", "image", "text:3"], ["text:2", "video", "text:4"]])
    out = tiny.model.generate(**batch, max_new_tokens=3, do_sample=False)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers as hf
from transformers.initialization import no_init_weights

from pact.hooks.families import families_with
from pact.models import tiny_inputs as ti

FAMILIES = families_with(tiny=True)
"""The families :func:`build` makes (``tiny`` in :data:`pact.hooks.families.VLM_FAMILIES`)."""
TEXT_FAMILIES = ("qwen2", "llama", "mistral", "gemma")
"""Text decoders of the llava-style families; Qwen-VL models bring their own (qwen2)."""
# Decoder shapes of Qwen2-0.5B / Qwen2-7B (LLaVA-OneVision's LLMs), vocab cut to 32000.
QWEN2_0_5B_SHAPE = dict(layers=24, hidden=896, heads=14, kv_heads=2, intermediate=4864, vocab=32000)
QWEN2_7B_SHAPE = dict(layers=28, hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=32000)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
TILE_PX = 32  # vision tower input side of the llava-style tiny models
DEFAULT_PATCH_PX = 4
QWEN_IMAGE_PX = 56
VIDEO_FRAMES = 4
VISION_WIDTH, VISION_HEADS = 32, 2
INIT_STD = 0.02


@dataclass
class TinyVLM:
    """A random-weight VLM plus what is needed to feed it hand-built batches.

    Token ids: 0 pad, 1 bos, 2 eos; the top ids of the vocab are the image, video and
    (Qwen-VL) vision start/end tokens, which ``generate`` is set never to emit.
    """

    model: hf.PreTrainedModel
    family: str
    image_token_id: int
    video_token_id: int | None  # None for families without video input
    layout: ti.Layout  # geometry and ids used to build inputs
    text: str = "qwen2"  # text decoder family

    def inputs(
        self, prompts: list[list[str]], padding_side: str = "left", seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Batch for ``model(**batch)`` and ``model.generate(**batch)``, on the model's device.

        Each row is a list of items: ``"text:N"`` (N random ordinary ids, drawn from
        ``seed``), ``"image"`` / ``"image:HxW"`` and ``"video"`` / ``"video:F"`` /
        ``"video:FxHxW"``.  Images and videos expand to as many placeholders as the
        family's processor writes; rows are padded with id 0 on ``padding_side``.
        """
        batch = ti.build_batch(self.layout, prompts, padding_side, seed)
        return {name: tensor.to(self.model.device) for name, tensor in batch.items()}

    def visual_mask(self, batch: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """``[B, N]`` bool mask of image/video placeholders of a batch (or of ``input_ids``)."""
        input_ids = batch["input_ids"] if isinstance(batch, dict) else batch
        return ti.visual_mask(self.layout, input_ids)

    def image_tokens(self, hw: tuple[int, int] | None = None, multi_image: bool = False) -> int:
        """Placeholder tokens of one image of size ``hw`` (default size when ``None``).

        ``multi_image``: the image shares its row with other images (OneVision then
        keeps only the base tile).
        """
        return ti.image_token_count(self.layout, hw or self.layout.image_hw, multi_image)

    def video_tokens(self, frames: int | None = None) -> int:
        """Placeholder tokens of one video of ``frames`` frames at the default size."""
        frames = frames or self.layout.frames
        return ti.video_token_count(self.layout, frames, self.layout.image_hw)


def build(
    family: str,
    *,
    text: str = "qwen2",
    layers: int = 8,
    attn: str = "sdpa",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    intermediate: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    patch_size: int = DEFAULT_PATCH_PX,
    device: str | torch.device | None = None,
) -> TinyVLM:
    """Build a deterministic tiny ``family`` VLM with a ``text`` decoder and 1-layer vision tower.

    ``image_size`` is the default image size used by :meth:`TinyVLM.inputs` (for plain
    LLaVA it is also the vision tower's input side); ``patch_size`` is the vision patch.
    """
    _check_family(family, text)
    shape = {"layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads}
    shape |= {"intermediate": intermediate or 2 * hidden, "vocab": vocab}
    layout = make_layout(family, shape["vocab"], _image_hw(family, image_size), patch_size, dtype)
    return _assemble(family, text, shape, layout, attn, seed, device, fast_init=False)


def build_shaped(
    shape: dict[str, int],
    family: str = "llava_onevision",
    *,
    image_tokens: int,
    text: str = "qwen2",
    attn: str = "sdpa",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> TinyVLM:
    """Random-weight VLM with a real decoder ``shape`` whose default image gives ~``image_tokens``.

    ``shape`` holds ``layers, hidden, heads, kv_heads, intermediate, vocab`` (see
    :data:`QWEN2_0_5B_SHAPE`).  Weights are filled with one fast uniform pass instead of
    transformers' normal init, so the 0.5B shape builds in seconds on CPU.
    """
    _check_family(family, text)
    layout = _layout_for_tokens(family, shape["vocab"], image_tokens, dtype)
    return _assemble(family, text, dict(shape), layout, attn, seed, device, fast_init=True)


def text_decoders(family: str) -> tuple[str, ...]:
    """The text decoders a tiny ``family`` model can have (its own for Qwen-VL)."""
    return ("qwen2",) if family in ti.QWEN_FAMILIES else TEXT_FAMILIES


FAMILY_TEXTS = tuple((family, text) for family in FAMILIES for text in text_decoders(family))
"""Every (family, text decoder) pair :func:`build` makes."""


def _check_family(family: str, text: str) -> None:
    """Reject unknown families and text decoders that the family cannot use."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    allowed = text_decoders(family)
    if text not in allowed:
        raise ValueError(f"text must be one of {allowed} for family {family!r}, got {text!r}")


def _image_hw(family: str, image_size: int | tuple[int, int] | None) -> tuple[int, int]:
    """Default image (h, w) for a family, or the caller's ``image_size``."""
    if image_size is None:
        image_size = QWEN_IMAGE_PX if family in ti.QWEN_FAMILIES else TILE_PX
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if family == "llava" and hw[0] != hw[1]:
        raise ValueError(f"llava images are square (the tower's input), got image_size={hw}")
    return hw


def make_layout(
    family: str,
    vocab: int,
    image_hw: tuple[int, int],
    patch: int,
    dtype: torch.dtype,
    tile: int = TILE_PX,
) -> ti.Layout:
    """Token ids and vision geometry of a family; the top 4 vocab ids are the specials.

    ``tile`` is the llava-style vision input side (plain LLaVA uses the image side).
    """
    tile = image_hw[0] if family == "llava" else tile
    if family not in ti.QWEN_FAMILIES and tile % patch:
        raise ValueError(f"patch_size={patch} must divide the vision input side {tile}")
    pinpoints: tuple[tuple[int, int], ...] = ()
    if family == "llava_next":  # the llava-v1.6 canvases, in tiles
        pinpoints = tuple((a * tile, b * tile) for a, b in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3)))
    elif family == "llava_onevision":  # OneVision's grid, up to 4x4 tiles
        pinpoints = tuple((a * tile, b * tile) for a in range(1, 5) for b in range(1, 5))
    qwen = family in ti.QWEN_FAMILIES
    return ti.Layout(
        family=family,
        tile=tile,
        patch=patch,
        image_hw=image_hw,
        frames=VIDEO_FRAMES,
        image_id=vocab - 1,
        video_id=vocab - 2 if family in ti.VIDEO_FAMILIES else None,
        text_ids=(BOS_ID + 2, vocab - 4),
        wrap_ids=(vocab - 3, vocab - 4) if qwen else None,
        pinpoints=pinpoints,
        pad_id=PAD_ID,
        dtype=dtype,
    )


def _layout_for_tokens(family: str, vocab: int, tokens: int, dtype: torch.dtype) -> ti.Layout:
    """Layout (2-px patches) whose default image gives the token count closest to ``tokens``.

    Any-resolution families try 2x2, 1x2 and 1x1-tile images (2x2 wins ties).
    """
    tilings = ((2, 2), (1, 2), (1, 1)) if family in ti.ANYRES_FAMILIES else ((1, 1),)
    best: tuple[int, ti.Layout] | None = None
    for side in range(1, 160):  # patches per tile side (merged tokens per side for Qwen-VL)
        tile = 2 * side
        for rows, cols in tilings:
            qwen = family in ti.QWEN_FAMILIES  # Qwen: 2x2 patches merge into one token
            hw = (2 * tile, 2 * tile) if qwen else (rows * tile, cols * tile)
            layout = make_layout(family, vocab, hw, 2, dtype, tile=tile)
            miss = abs(ti.image_token_count(layout, hw) - tokens)
            if best is None or miss < best[0]:
                best = (miss, layout)
    return best[1]


def _assemble(family, text, shape, layout, attn, seed, device, fast_init) -> TinyVLM:
    """Build config and model, move/cast it, and set generation defaults."""
    config = model_config(family, text, shape, layout)
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = _instantiate(config, layout.dtype, attn, fast_init)
    model.eval()
    gen_config = model.generation_config
    gen_config.pad_token_id = PAD_ID
    gen_config.bos_token_id = BOS_ID
    gen_config.eos_token_id = EOS_ID
    specials = [layout.image_id, layout.video_id, *(layout.wrap_ids or ()), PAD_ID, BOS_ID]
    gen_config.suppress_tokens = [tid for tid in specials if tid is not None]
    return TinyVLM(model, family, layout.image_id, layout.video_id, layout, text)


def _instantiate(config, dtype: torch.dtype, attn: str, fast_init: bool) -> hf.PreTrainedModel:
    """Instantiate from config; ``fast_init`` fills matrices with one uniform pass."""
    auto = hf.AutoModelForImageTextToText
    if not fast_init:
        return auto.from_config(config, dtype=dtype, attn_implementation=attn)
    with no_init_weights():
        model = auto.from_config(config, dtype=dtype, attn_implementation=attn)
    bound = INIT_STD * 3**0.5  # uniform with the std of transformers' normal init
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.uniform_(-bound, bound)
                param._is_hf_initialized = True
    model.init_weights()  # norms, biases, rotary buffers, image_newline; skips flagged params
    return model


def model_config(family: str, text: str, shape: dict, layout: ti.Layout):
    """Composite transformers config of a family around the decoder ``shape``."""
    if family in ti.QWEN_FAMILIES:
        return _qwen_config(family, shape, layout)
    common = {"text_config": text_config(text, shape), "image_token_id": layout.image_id}
    if family == "llava":
        return hf.LlavaConfig(
            vision_config=_clip_config(layout),
            image_seq_length=layout.grid**2,
            vision_feature_layer=-1,
            **common,
        )
    common["image_grid_pinpoints"] = [list(p) for p in layout.pinpoints]
    if family == "llava_next":
        return hf.LlavaNextConfig(
            vision_config=_clip_config(layout), vision_feature_layer=-1, **common
        )
    return hf.LlavaOnevisionConfig(
        vision_config=_siglip_config(layout), video_token_id=layout.video_id, **common
    )


def text_config(text: str, shape: dict):
    """Decoder config of a text family (qwen2, llama, mistral, gemma) with ``shape``."""
    common = _decoder_kwargs(shape)
    if text == "qwen2":
        return hf.Qwen2Config(**common)
    if text == "llama":
        return hf.LlamaConfig(**common)
    if text == "mistral":
        return hf.MistralConfig(**common, sliding_window=None)
    return hf.GemmaConfig(**common, head_dim=shape["hidden"] // shape["heads"])


def _decoder_kwargs(shape: dict) -> dict:
    """Config kwargs shared by every decoder family."""
    return {
        "vocab_size": shape["vocab"],
        "hidden_size": shape["hidden"],
        "intermediate_size": shape["intermediate"],
        "num_hidden_layers": shape["layers"],
        "num_attention_heads": shape["heads"],
        "num_key_value_heads": shape["kv_heads"],
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }


def _clip_config(layout: ti.Layout):
    """One-layer CLIP vision tower (CLS token dropped by the 'default' strategy)."""
    return hf.CLIPVisionConfig(**_vision_kwargs(layout), projection_dim=VISION_WIDTH)


def _siglip_config(layout: ti.Layout):
    """One-layer SigLIP vision tower without pooling head (OneVision's)."""
    return hf.SiglipVisionConfig(**_vision_kwargs(layout), vision_use_head=False)


def _vision_kwargs(layout: ti.Layout) -> dict:
    """Sizes shared by the CLIP / SigLIP tiny towers."""
    return {
        "hidden_size": VISION_WIDTH,
        "intermediate_size": 2 * VISION_WIDTH,
        "num_hidden_layers": 1,
        "num_attention_heads": VISION_HEADS,
        "image_size": layout.tile,
        "patch_size": layout.patch,
    }


def _qwen_config(family: str, shape: dict, layout: ti.Layout):
    """Qwen2-VL / Qwen2.5-VL config: M-RoPE text model, 1-block vision tower, merge 2."""
    half = shape["hidden"] // shape["heads"] // 2  # rotary frequencies per head
    temporal = half // 4
    height = (half - temporal) // 2
    rope = {"rope_type": "default", "rope_theta": 1e6}
    rope["mrope_section"] = [temporal, height, half - temporal - height]
    vision = {"depth": 1, "num_heads": VISION_HEADS, "patch_size": layout.patch}
    vision |= {"spatial_merge_size": layout.merge, "temporal_patch_size": layout.temporal}
    ids = {"image_token_id": layout.image_id, "video_token_id": layout.video_id}
    ids |= {"vision_start_token_id": layout.wrap_ids[0], "vision_end_token_id": layout.wrap_ids[1]}
    # Sub-configs as dicts: transformers 5.0 drops sub-config objects given to these classes.
    if family == "qwen2_vl":
        vision_config = vision | {"embed_dim": VISION_WIDTH, "hidden_size": shape["hidden"]}
        text = hf.Qwen2VLTextConfig(**_decoder_kwargs(shape), rope_parameters=rope)
        return hf.Qwen2VLConfig(
            text_config=text.to_dict(), vision_config=vision_config | {"mlp_ratio": 2}, **ids
        )
    window = 4 * layout.merge * layout.patch  # 4x4 merged tokens per attention window
    vision_config = vision | {
        "hidden_size": VISION_WIDTH,
        "intermediate_size": 2 * VISION_WIDTH,
        "out_hidden_size": shape["hidden"],
        "window_size": window,
        "fullatt_block_indexes": [],
    }
    text = hf.Qwen2_5_VLTextConfig(**_decoder_kwargs(shape), rope_parameters=rope)
    return hf.Qwen2_5_VLConfig(text_config=text.to_dict(), vision_config=vision_config, **ids)
