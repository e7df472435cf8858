"""Real transformers processors for pact's tiny random-weight VLMs, built offline.

Evaluation harnesses hand a model text and PIL images, so a tiny model needs what a hub
checkpoint ships: a tokenizer, an image processor and a chat template. Here they are made
from local pieces: a byte-level tokenizer (every byte is one token, so any task's text
encodes) and the family's own image processor class set to the tiny vision geometry of
:mod:`pact.models.tiny`. The model and the processor then agree on every placeholder count
because transformers computes both from the same image sizes.
"""

from __future__ import annotations

import torch
import transformers as hf

from pact.models import tiny_inputs as ti
from pact.models.tiny import BOS_ID, EOS_ID, FAMILIES, PAD_ID, TinyVLM, build

BYTE_BASE = 3  # ids 0-2 are pad, bos, eos; the 256 byte tokens follow
VOCAB = BYTE_BASE + 256 + 4  # the tiny layout puts its 4 special ids at the top
SPECIAL_NAMES = {PAD_ID: "<pad>", BOS_ID: "<s>", EOS_ID: "</s>"}
LLAVA_TOKENS = ("<vision_end>", "<vision_start>", "<video>", "<image>")  # ids VOCAB-4..-1
QWEN_TOKENS = ("<|vision_end|>", "<|vision_start|>", "<|video_pad|>", "<|image_pad|>")
QWEN_MAX_SIDE = 64  # px; Qwen-VL resizes images to at most this area, 64 tokens


def _chat_template(image_text: str) -> str:
    """'role: <images>text' per message, then 'assistant: ' when a reply is asked for."""
    return (
        "{% for m in messages %}{{ m['role'] }}: "
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}" + image_text + "{% endif %}"
        "{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{{ '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )


def byte_tokenizer(top_tokens: tuple[str, str, str, str]) -> hf.PreTrainedTokenizerFast:
    """A tokenizer with one token per byte and the four tiny special ids at the top."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    # Any bijection of the 256 byte symbols onto the ordinary ids works; sorted is stable.
    vocab = {symbol: BYTE_BASE + i for i, symbol in enumerate(sorted(level.alphabet()))}
    vocab |= {name: index for index, name in SPECIAL_NAMES.items()}
    vocab |= {name: VOCAB - 4 + i for i, name in enumerate(top_tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = level
    backend.decoder = decoders.ByteLevel()
    names = [*SPECIAL_NAMES.values(), *top_tokens]
    backend.add_special_tokens([AddedToken(name, special=True) for name in names])
    image, video = top_tokens[3], top_tokens[2]
    return hf.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="left",
        extra_special_tokens={"image_token": image, "video_token": video},
    )


def _without_video(processor_class):
    """``processor_class`` accepting ``video_processor=None``: tiny models take no video, and
    transformers cannot type-check a missing video processor when torchvision is absent."""

    class ImageOnly(processor_class):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnly.__name__ = ImageOnly.__qualname__ = processor_class.__name__
    return ImageOnly


def tiny_processor(tiny: TinyVLM):
    """The processor of ``tiny``'s family, set to its vision geometry (no video input)."""
    layout = tiny.layout
    qwen = layout.family in ti.QWEN_FAMILIES
    tokenizer = byte_tokenizer(QWEN_TOKENS if qwen else LLAVA_TOKENS)
    if qwen:
        template = _chat_template(f"{QWEN_TOKENS[1]}{QWEN_TOKENS[3]}{QWEN_TOKENS[0]}")
        images = hf.Qwen2VLImageProcessor(
            patch_size=layout.patch,
            merge_size=layout.merge,
            temporal_patch_size=layout.temporal,
            min_pixels=(layout.patch * layout.merge) ** 2,
            max_pixels=QWEN_MAX_SIDE**2,
        )
        processor_class = hf.Qwen2VLProcessor
        if layout.family == "qwen2_5_vl":
            processor_class = hf.Qwen2_5_VLProcessor
        return _without_video(processor_class)(
            images, tokenizer, video_processor=None, chat_template=template
        )
    template = _chat_template(LLAVA_TOKENS[3])
    side = {"height": layout.tile, "width": layout.tile}
    clip_style = {  # CLIP towers: one CLS token, dropped by the "default" strategy
        "patch_size": layout.patch,
        "num_additional_image_tokens": 1,
        "vision_feature_select_strategy": "default",
        "chat_template": template,
    }
    if layout.family == "llava":
        images = hf.CLIPImageProcessor(size={"shortest_edge": layout.tile}, crop_size=side)
        return hf.LlavaProcessor(images, tokenizer, **clip_style)
    pinpoints = [list(p) for p in layout.pinpoints]
    if layout.family == "llava_next":
        images = hf.LlavaNextImageProcessor(
            size={"shortest_edge": layout.tile}, crop_size=side, image_grid_pinpoints=pinpoints
        )
        return hf.LlavaNextProcessor(images, tokenizer, **clip_style)
    images = hf.LlavaOnevisionImageProcessor(size=side, image_grid_pinpoints=pinpoints)
    return _without_video(hf.LlavaOnevisionProcessor)(
        images,
        tokenizer,
        video_processor=None,
        num_image_tokens=layout.grid**2,
        vision_feature_select_strategy="full",
        chat_template=template,
    )


def load_tiny(
    family: str,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    attn: str = "sdpa",
):
    """``(processor, model)``: a tiny ``family`` VLM whose vocabulary fits the processor."""
    if family not in FAMILIES:
        raise ValueError(f"tiny model family must be one of {', '.join(FAMILIES)}; got {family!r}")
    tiny = build(family, vocab=VOCAB, seed=seed, device=device, dtype=dtype, attn=attn)
    return tiny_processor(tiny), tiny.model
