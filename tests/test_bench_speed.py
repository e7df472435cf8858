"""`pact bench speed`: report fields checked against the raw figures and the hooked model."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
import torch

from pact.bench.speed import RATIO_KEYS
from pact.cli import main
from pact.config import PactConfig
from pact.hooks import attached
from pact.models.shaped import make_batch
from pact.models.tiny import build

pytestmark = pytest.mark.usefixtures("single_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ARGV = ["bench", "speed", "--configs", "pact,fastv", "--strength", "pact=0.3", "--strength",
        "fastv=0.5,0.25", "--repeats", "1", "--decode-tokens", "2", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One CLI run on the default tiny model: none, pact at 0.3, fastv at 0.5 and 0.25."""
    folder = tmp_path_factory.mktemp("speed")
    json_path, png_path = folder / "s.json", folder / "s.png"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert main([*ARGV, "--json", str(json_path), "--plot", str(png_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(json_path.read_text(encoding="utf-8"))
    return report, png_path, out.getvalue()


@pytest.fixture(scope="module")
def tiny():
    return build("llava", seed=0)


def test_every_configuration_present_none_first(run):
    report, _, table = run
    rows = report["rows"]
    assert [(r["config"], r["value"]) for r in rows] == [
        ("none", None), ("pact", 0.3), ("fastv", 0.5), ("fastv", 0.25)
    ]  # fmt: skip
    assert all(r["status"] == "ok" for r in rows)
    assert report["repeats"] == 1 and report["decode_tokens"] == 2
    assert "resident-set" in report["peak_memory"]  # says how CPU peak memory is taken
    lines = table.splitlines()
    assert sum(line.startswith("fastv ") for line in lines) == 2
    assert any(line.startswith("none ") and "1.00x" in line for line in lines)


def test_ratios_to_none_are_ratios_of_raw_figures(run):
    rows = run[0]["rows"]
    none = rows[0]
    assert none["prefill_seconds"] > 0 and none["decode_tokens_per_s"] > 0
    for row in rows:
        ratios = row["ratios"]
        assert ratios["prefill_seconds"] == pytest.approx(
            row["prefill_seconds"] / row["none_prefill_seconds"]
        )
        for key in RATIO_KEYS[1:]:
            expected = row[key] / none[key] if none[key] else None
            assert ratios[key] == pytest.approx(expected)
    assert all(value == pytest.approx(1.0) for key, value in none["ratios"].items() if value)


def test_kv_bytes_shrink_as_the_kept_counts_say(run):
    none, *reduced = run[0]["rows"]
    for row in reduced:
        assert none["kv_bytes"] == row["kv_bytes_none"] > row["kv_bytes"] > 0
        assert row["kv_bytes"] == row["kv_bytes_expected"]  # per-layer lengths from stats


def test_visual_tokens_kept_match_handle_stats(run, tiny):
    rows = run[0]["rows"]
    batch = make_batch(tiny, 1, seed=0)
    visual = int(tiny.visual_mask(batch).sum())
    assert rows[0]["visual_kept"] == rows[0]["visual_in"] == visual
    for row in rows[1:]:
        with attached(tiny.model, PactConfig.load(row["config"], row["overrides"])) as handle:
            with torch.no_grad():
                tiny.model(**batch, logits_to_keep=1)
            assert row["visual_kept"] == sum(handle.stats.last[-1].after_merge) < visual
            assert row["prefill_flops"] == handle.stats.last_flops[0] < rows[0]["prefill_flops"]
            assert handle.stats.last_flops[1] == rows[0]["prefill_flops"]
            assert row["reduction_ratio"] == pytest.approx(handle.stats.last_reduction_ratio)
        assert set(row["seconds"]) == {"score", "cluster", "merge"}
    assert rows[2]["visual_kept"] == visual // 2  # fastv keeps floor(0.5 n)


def test_baselines_have_speed_rows(tmp_path, capsys):
    """DART and DivPrune at their strength knob; PyramidDrop from a config file placing its
    three stages in the tiny model's 8 layers."""
    pyramid = tmp_path / "pyramiddrop8.yaml"
    overrides = ["stages.0.layer=2", "stages.1.layer=4", "stages.2.layer=6"]
    PactConfig.load("pyramiddrop", overrides).to_yaml(pyramid)
    argv = ["bench", "speed", "--configs", f"dart,divprune,{pyramid}", "--strength",
            "dart=0.5", "--strength", "divprune=0.25", "--repeats", "1", "--decode-tokens", "1",
            "--quiet", "--json", str(tmp_path / "s.json")]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))["rows"]
    assert [(r["config"], r["value"]) for r in rows] == [
        ("none", None), ("dart", 0.5), ("divprune", 0.25), (str(pyramid), None)
    ]  # fmt: skip
    assert all(r["status"] == "ok" for r in rows)
    visual = rows[0]["visual_kept"]
    assert [r["visual_kept"] for r in rows[1:]] == [visual // 2, visual // 4, visual // 8]
    assert all(r["ratios"]["prefill_flops"] < 1 for r in rows[1:])
    assert "GFLOPs" in capsys.readouterr().out


def test_json_and_png_written(run):
    report, png_path, table = run
    assert png_path.read_bytes()[:8] == PNG_MAGIC
    assert report["benchmark"] == "speed" and report["tokens"] > report["rows"][0]["visual_in"]
    assert "wrote" in table


def test_target_ratio_tunes_each_knob(capsys):
    argv = ["bench", "speed", "--configs", "fastv,kmeans", "--target-ratio", "0.5",
            "--repeats", "1", "--decode-tokens", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"^fastv\s+keep_ratio=0\.5\s", out, flags=re.MULTILINE)
    assert re.search(r"^kmeans\s+clusterer\.keep_ratio=0\.5\s", out, flags=re.MULTILINE)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--configs", "nosuch"], "--configs"),
        (["--strength", "pact"], "--strength"),
        (["--strength", "pact=0.3", "--target-ratio", "0.5"], "--strength"),
        (["--target-ratio", "1.5"], "--target-ratio"),
        (["--configs", "vtw", "--target-ratio", "0.5"], "--target-ratio"),
        (["--repeats", "0"], "--repeats"),
        (["--decode-tokens", "0"], "--decode-tokens"),
        (["--model", "tiny:blip"], "--model"),
        (["--model", "shape:qwen9"], "--model"),
        (["--model", "shape:qwen2-0.5b:blip"], "shape:<name>:<family>"),
        (["--model", "some/checkpoint"], "--image"),
        (["--model", "some/checkpoint", "--image", "/no/such.png"], "--image"),
        (["--device", "tpu"], "--device"),
        (["--json", "/no/such/folder/s.json"], "--json"),
    ],
)
def test_bad_arguments_exit_2_naming_them(argv, needle, capsys):
    assert main(["bench", "speed", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("pact bench speed: ")
    assert needle in captured.err


def test_unparsable_numbers_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "speed", "--repeats", "many"])
    assert exit_info.value.code == 2
    assert "--repeats" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "speed", "--help"])
    assert exit_info.value.code == 0
    assert "--target-ratio" in capsys.readouterr().out


def test_a_shaped_model_takes_another_family_for_a_vision_stage():
    from pact.models.shaped import load

    subject = load("shape:qwen2-0.5b:llava", 64, "float32", "cpu", seed=0)
    assert type(subject.model).__name__ == "LlavaForConditionalGeneration"
    assert subject.model.config.text_config.num_hidden_layers == 24
    assert subject.visual_tokens() == 64
    assert "random-weight llava, qwen2-0.5b-shaped" in subject.description


def test_visionzips_token_count_is_tuned_to_the_target_ratio():
    from pact.bench.tuning import tunable, tune_knob
    from pact.models.shaped import load

    subject = load("tiny:llava", 0, "float32", "cpu", seed=0)  # one 64-token image
    assert tunable("visionzip")
    knob, value, got, tries = tune_knob(subject.model, subject.batch, "visionzip", 0.6, 7)
    assert knob == "keep_tokens" and isinstance(value, int)
    assert got == pytest.approx(1 - (value + 10) / 64)  # dominant + the preset's 10 contextual
    assert abs(got - 0.6) <= 1 / 64 + 1e-9  # one token of the image is the finest step
    assert all(isinstance(tried, int) for tried, _ in tries)
