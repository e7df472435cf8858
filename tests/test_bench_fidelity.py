"""`pact bench fidelity`: figures checked against the hooked model run directly."""

from __future__ import annotations

import json

import pytest
import torch

import pact
from pact.bench.fidelity import ROWS, kl_divergence
from pact.bench.tuning import STRENGTHS
from pact.cli import main
from pact.config import PactConfig
from pact.models.tiny import build

pytestmark = pytest.mark.usefixtures("single_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One CLI run: `none` reference, euti at 1.0 (no reduction) and 0.5, pact at 0.3."""
    folder = tmp_path_factory.mktemp("fidelity")
    json_path, png_path = folder / "f.json", folder / "f.png"
    argv = ["bench", "fidelity", "--presets", "euti,pact", "--strength", "euti=1.0,0.5",
            "--strength", "pact=0.3", "--new-tokens", str(NEW_TOKENS), "--json", str(json_path),
            "--plot", str(png_path), "--quiet"]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(json_path.read_text(encoding="utf-8"))
    points = {(p["preset"], p["value"]): p for p in report["points"]}
    return report, points, png_path


@pytest.fixture(scope="module")
def tiny():
    model = build("llava", seed=0)
    return model, model.inputs([list(row) for row in ROWS], padding_side="left", seed=0)


def test_points_plot_and_plumbing_note(run, capsys):
    report, points, png_path = run
    assert list(points) == [("none", None), ("euti", 1.0), ("euti", 0.5), ("pact", 0.3)]
    assert png_path.read_bytes()[:8] == PNG_MAGIC
    assert "plumbing" in report["note"]
    for point in points.values():
        assert point["status"] == "ok"
        assert point["kl_last"] >= 0 and point["kl_steps"] >= 0
        assert 0 <= point["top1_steps"] <= 1 and 0 <= point["exact_match"] <= 1
    assert points[("euti", 0.5)]["knob"] == STRENGTHS["euti"][0] == "keep_ratio"


@pytest.mark.parametrize("key", [("none", None), ("euti", 1.0)])
def test_no_reduction_is_exact(run, key):
    point = run[1][key]
    assert point["reduction_ratio"] == 0.0
    assert point["kl_last"] == pytest.approx(0.0, abs=1e-9)
    assert point["kl_steps"] == pytest.approx(0.0, abs=1e-9)
    assert point["top1_last"] == point["top1_steps"] == point["exact_match"] == 1.0


@pytest.mark.parametrize(("preset", "value"), [("euti", 0.5), ("pact", 0.3)])
def test_ratio_and_exact_match_agree_with_the_hooked_model(run, tiny, preset, value):
    report, points, _ = run
    point = points[(preset, value)]
    model, batch = tiny
    config = PactConfig.load(preset, [f"{STRENGTHS[preset][0]}={value}"])
    with pact.attached(model.model, config) as handle, torch.no_grad():
        model.model(**batch)
        assert point["reduction_ratio"] == pytest.approx(handle.stats.last_reduction_ratio)
        # The derived exact match equals comparing two free-running greedy generations.
        output = model.model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    generated = output[:, batch["input_ids"].shape[1] :].tolist()
    same = [mine == theirs for mine, theirs in zip(generated, report["reference_tokens"],
                                                   strict=True)]  # fmt: skip
    assert point["exact_match"] == pytest.approx(sum(same) / len(same))
    assert 0 < point["reduction_ratio"] < 1


def test_kl_divergence_properties():
    logits = torch.randn(3, 10)
    logits[:, 0] = float("-inf")  # a suppressed token in both
    assert torch.all(kl_divergence(logits, logits) == 0)
    other = torch.randn(3, 10)
    other[:, 0] = float("-inf")
    kl = kl_divergence(logits, other)
    assert torch.all(kl > 0) and torch.isfinite(kl).all()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--presets", "pactt"], "--presets: 'pactt'"),
        (["--strength", "euti"], "--strength"),
        (["--strength", "euti=a"], "--strength"),
        (["--model", "blip"], "--model must be one of"),
        (["--new-tokens", "0"], "--new-tokens"),
        (["--threads", "0"], "--threads"),
        (["--plot", "/no/such/folder/f.png"], "--plot"),
    ],
)
def test_bad_arguments_exit_2_naming_them(argv, needle, capsys):
    assert main(["bench", "fidelity", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("pact bench fidelity: ")
    assert needle in captured.err
