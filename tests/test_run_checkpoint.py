"""`pact run` on a checkpoint on disk: a tiny random-weight LLaVA with a real processor."""

from __future__ import annotations

import re

import pytest
import torch
import transformers as hf
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers

from pact.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

TILE, PATCH = 32, 4
GRID_TOKENS = (TILE // PATCH) ** 2  # CLIP's CLS token is dropped by the 'default' strategy
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
WORDS = ["USER:", "ASSISTANT:", "what", "is", "this?", "a", "cat", "dog", "red", "blue"]
WORDS += [f"w{i}" for i in range(40)]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | upper }}: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _processor() -> hf.LlavaProcessor:
    """A LlavaProcessor built from local pieces only: word-level tokenizer, CLIP pixels."""
    vocab = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = hf.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip
    images = hf.CLIPImageProcessor(
        size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}
    )
    return hf.LlavaProcessor(
        images, tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )  # fmt: skip


def _save_checkpoint(path, text_config, text: str = "qwen2"):
    """Processor and random-weight model saved side by side, as on the hub; ``text`` phi3
    is a decoder pact does not support (fused qkv_proj, no q_proj/k_proj)."""
    processor = _processor()
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    vision = hf.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=TILE, patch_size=PATCH, projection_dim=32,
    )  # fmt: skip
    config = hf.LlavaConfig(
        vision_config=vision, text_config=text_config(text, vocab_size=len(processor.tokenizer)),
        image_token_id=image_id, image_seq_length=GRID_TOKENS, vision_feature_layer=-1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = hf.LlavaForConditionalGeneration(config).eval()
    # Random weights: keep special and image ids out of the answer so it has words.
    model.generation_config.suppress_tokens = list(range(len(SPECIALS)))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return processor, image_id


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_decoder_config):
    path = tmp_path_factory.mktemp("tiny-llava")
    processor, image_id = _save_checkpoint(path, tiny_decoder_config)
    png = path / "image.png"
    Image.new("RGB", (48, 40), (200, 30, 90)).save(png)
    return path, png, processor, image_id


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["run", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _field(out: str, name: str) -> str:
    return re.search(rf"^{re.escape(name)}: (.*)$", out, re.MULTILINE).group(1)


def test_run_checkpoint_reduces_and_compares(checkpoint, capsys):
    path, png, processor, image_id = checkpoint
    code, out, _ = _run(capsys, "--model", str(path), "--image", str(png),
                        "--prompt", "what is this?", "--max-new-tokens", "3")  # fmt: skip
    assert code == 0
    # Count placeholders independently of pact: the processor on the templated prompt.
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.open(png).convert("RGB")
    ids = processor(images=[image], text=[text], return_tensors="pt")["input_ids"]
    expected = int((ids == image_id).sum())
    assert expected == GRID_TOKENS
    assert int(_field(out, "visual tokens in")) == expected
    assert 0 < int(_field(out, "visual tokens out")) < expected
    assert 0.0 < float(_field(out, "reduction ratio")) < 1.0
    answer = _field(out, "answer")
    assert len(answer.split()) == 3 and set(answer.split()) <= set(WORDS)
    assert _field(out, "unreduced answer").split()[0] in WORDS
    assert _field(out, "answers match") in ("yes", "no")
    assert float(_field(out, "prefill s")) > 0
    assert re.search(r"^generation s: [0-9.]+ \(3 new tokens", out, re.MULTILINE)


def test_run_checkpoint_config_none_matches(checkpoint, capsys):
    path, png, _, _ = checkpoint
    code, out, _ = _run(capsys, "--model", str(path), "--image", str(png), "--prompt", "a cat",
                        "--config", "none", "--max-new-tokens", "3", "--dtype", "float32",
                        "--attn", "eager", "--device", "cpu")  # fmt: skip
    assert code == 0
    assert _field(out, "answer") == _field(out, "unreduced answer")
    assert _field(out, "answers match") == "yes"
    code, out, _ = _run(capsys, "--model", str(path), "--image", str(png), "--prompt", "a cat",
                        "--max-new-tokens", "2", "--no-compare")  # fmt: skip
    assert code == 0 and "unreduced answer" not in out and _field(out, "answer")


def test_run_builtin_names_still_run_the_demo(capsys):
    code, out, _ = _run(capsys, "--model", "tiny:llava", "--max-new-tokens", "2")
    assert code == 0 and "model: tiny random-weight llava" in out


def test_run_argument_errors(checkpoint, tmp_path, capsys):
    path, png, _, _ = checkpoint
    code, _, err = _run(capsys, "--model", str(path), "--prompt", "x")
    assert code == 2 and "--image is required" in err
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    code, _, err = _run(capsys, "--model", str(path), "--image", str(not_image))
    assert code == 2 and f"--image {str(not_image)!r} cannot be read" in err
    code, _, err = _run(capsys, "--model", str(path), "--image", str(tmp_path / "none.png"))
    assert code == 2 and "--image" in err
    code, _, err = _run(capsys, "--model", str(tmp_path / "missing"), "--image", str(png))
    assert code == 2 and "--model" in err and "no such directory" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "--model", str(empty), "--image", str(png))
    assert code == 2 and f"--model {str(empty)!r} cannot be loaded" in err
    code, _, err = _run(capsys, "--model", "llava", "--image", str(png))
    assert code == 2 and "--image applies to checkpoint models" in err
    code, _, err = _run(capsys, "--model", str(path), "--image", str(png), "--set", "layer=99")
    assert code == 2 and "layer 99 is out of range" in err
    if not torch.cuda.is_available():
        code, _, err = _run(capsys, "--model", str(path), "--image", str(png), "--device", "cuda")
        assert code == 2 and "--device cuda" in err


def test_run_unsupported_checkpoint_names_the_model(tmp_path, capsys, tiny_decoder_config):
    _save_checkpoint(tmp_path, tiny_decoder_config, text="phi3")
    png = tmp_path / "image.png"
    Image.new("RGB", (32, 32)).save(png)
    code, _, err = _run(capsys, "--model", str(tmp_path), "--image", str(png))
    assert code == 2
    assert f"--model {str(tmp_path)!r}" in err and "lacks q_proj, k_proj" in err
