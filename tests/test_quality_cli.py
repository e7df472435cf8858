"""`python -m pact.models.shapes.train` and `pact bench quality`: outputs checked by
recomputation."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
import torch

from pact.cli import main
from pact.models.shapes import card as quality_card
from pact.models.shapes import train
from pact.models.shapes.auxiliary import CLASSES, patch_labels
from pact.models.shapes.model import (
    GRID,
    PATCH_PX,
    answer_logits,
    batch,
    card_figures,
    load,
    new_model,
    training_batch,
)
from pact.models.shapes.questions import TOKEN_IDS, make_examples
from pact.models.shapes.scenes import COLOURS, SHAPES
from pact.models.shapes.score import examples, predictions

pytestmark = pytest.mark.usefixtures("single_thread")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model from a 3-step run of the training script (its weights mean nothing)."""
    out = tmp_path_factory.mktemp("trained")
    figures = train.main(["--out", str(out), "--steps", "3", "--batch-size", "4",
                          "--warmup", "1", "--test-size", "16", "--threads", "1"])  # fmt: skip
    return out, figures


def test_training_script_saves_a_loadable_model_its_record_and_card(trained):
    out, figures = trained
    assert card_figures(out) == figures
    right = predictions(load(out), examples("test", 16))
    assert figures["test"]["accuracy"] == round(sum(right) / 16, 4)
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "--steps 3" in card and f"**{figures['test']['accuracy']}**" in card
    assert len(figures["settings"]) and figures["settings"]["steps"] == 3


def test_learning_rate_warms_up_then_decays():
    args = train.parse_args(["--out", "x", "--steps", "100", "--warmup", "10", "--lr", "1.0"])
    rates = [train.learning_rate(step, args) for step in range(100)]
    assert rates[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(rates[:10]))
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert rates[-1] == pytest.approx(0.05, abs=0.01)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["--steps", "0"], "--steps"), (["--warmup", "5", "--steps", "5"], "--warmup")],
)
def test_training_script_refuses_bad_arguments(argv, needle, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--out", "x", *argv])
    assert needle in capsys.readouterr().err


def test_bench_quality_table_json_and_plot(trained, tmp_path, capsys):
    out, _ = trained
    report_path, plot_path = tmp_path / "q.json", tmp_path / "q.png"
    argv = ["bench", "quality", "--model", str(out), "--methods", "euti,random,vtw",
            "--ratios", "0.5", "--examples", "16", "--calibration", "8",
            "--json", str(report_path), "--plot", str(plot_path), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert plot_path.read_bytes().startswith(PNG_MAGIC)
    unreduced = sum(predictions(load(out), examples("test", 16))) / 16
    assert report["unreduced_accuracy"] == round(unreduced, 4)
    rows = {row["method"]: row for row in report["rows"]}
    assert set(rows) == {"euti", "random", "vtw"}
    for method in ("euti", "random"):  # exact knobs: floor(0.5 * 256) tokens stay
        assert rows[method]["reduction_ratio"] == 0.5
        assert rows[method]["overrides"][-1] == "keep_ratio=0.5"
    assert rows["vtw"]["value"] == 4 and rows["vtw"]["layer_averaged_ratio"] == 0.5
    for row in rows.values():
        expected = round(row["accuracy"] / unreduced, 4) if unreduced else None
        assert row["relative_accuracy"] == expected
        assert re.search(rf"^{row['method']}\s+\S", printed, flags=re.MULTILINE)
    assert f"unreduced accuracy {report['unreduced_accuracy']:.4f} on 16" in printed


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--methods", "pact,blorp"], "--methods: unknown ['blorp']"),
        (["--ratios", "0.5,1.5"], "--ratios"),
        (["--layer", "8"], "--layer"),
        (["--examples", "0"], "--examples"),
        (["--model", "/no/such/dir"], "--model"),
    ],
)
def test_bench_quality_bad_arguments_exit_2_naming_them(argv, needle, capsys):
    assert main(["bench", "quality", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and needle in captured.err


def test_training_rows_start_with_exactly_the_evaluation_prompt():
    """The first question of a training row sees what evaluation shows, so its logits match."""
    groups = [make_examples("train", index, 3) for index in range(3)]
    rows = training_batch(groups)
    model = new_model(seed=0).eval()
    with torch.no_grad():
        logits = model(**{k: rows[k] for k in ("input_ids", "attention_mask", "pixel_values")},
                       use_cache=False).logits  # fmt: skip
    for i, group in enumerate(groups):
        prompt = batch([group[0]])
        first = int(rows["answer_at"][i, 0])
        assert torch.equal(rows["input_ids"][i, : first + 1], prompt["input_ids"][0])
        for slot, example in enumerate(group):
            at = int(rows["answer_at"][i, slot])
            assert int(rows["input_ids"][i, at]) == TOKEN_IDS["?"]
            assert int(rows["answers"][i, slot]) == example.answer_id
        with torch.no_grad():
            alone = answer_logits(model, prompt)[0]
        torch.testing.assert_close(logits[i, first], alone, atol=1e-5, rtol=1e-5)


def test_token_labels_mark_each_object_centre_and_leave_far_ground_empty():
    for index in range(20):
        scene = make_examples("train", index, 1)[0].scene
        labels = patch_labels(scene).reshape(GRID, GRID)
        near = np.zeros((GRID, GRID), dtype=bool)
        for obj in scene.objects:
            row, col = int(obj.y) // PATCH_PX, int(obj.x) // PATCH_PX
            pair = SHAPES.index(obj.shape) * len(COLOURS) + list(COLOURS).index(obj.colour)
            assert labels[row, col] == 1 + pair
            reach = int(obj.radius) // PATCH_PX + 2
            near[max(0, row - reach): row + reach + 1, max(0, col - reach): col + reach + 1] = True
        assert (labels[~near] == 0).all()
        assert labels.max() < CLASSES


def test_the_saved_model_has_no_training_head(trained):
    out, _ = trained
    saved = set(load(out).state_dict())
    assert saved == set(new_model(seed=0).state_dict())


def test_a_continued_run_keeps_the_chain_and_draws_new_scenes(trained, tmp_path):
    first_dir, first = trained
    second = train.main(["--init", str(first_dir), "--out", str(tmp_path), "--steps", "2",
                         "--batch-size", "4", "--warmup", "1", "--test-size", "16",
                         "--threads", "1"])  # fmt: skip
    assert second["previous"] == first
    assert train.scenes_seen(second) == 3 * 4 + 2 * 4  # the second run started at scene 12
    card = (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card.index(first["command"]) < card.index(second["command"])
    total = round(first["train_seconds"] + second["train_seconds"], 1)
    assert f"{total} s in all" in card


def test_card_command_rewrites_the_card_from_the_record(trained, tmp_path):
    out, figures = trained
    copy = tmp_path / "model"
    copy.mkdir()
    (copy / "training.json").write_text((out / "training.json").read_text())
    quality_card.main([str(copy)])
    assert (copy / "MODEL_CARD.md").read_text() == quality_card.render(figures)
