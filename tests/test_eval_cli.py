"""`pact eval`: options, argument errors before any model work, and a run of a local task."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers_eval import FAMILY, expected, noise_images, write_task

import pact
from pact.cli import build_parser, main
from pact.cli import eval as command

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def no_model_work(monkeypatch):
    """Fail the test if a model gets loaded: argument errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("pact.eval.runner.load_model", refuse)


def test_eval_runs_a_local_task_and_reports_metric_ratio_and_latency(tmp_path, capsys):
    pytest.importorskip("lmms_eval")
    images = noise_images(4)
    answers, visual_in, visual_out = expected(images)
    # Two documents carry the answer the model gives, two an answer it cannot give.
    write_task(tmp_path, images, answers[:2] + ["never-answered"] * 2)
    output = tmp_path / "report.json"
    code = main(
        [
            "eval",
            "--model",
            f"tiny:{FAMILY}",
            "--tasks",
            "tiny_vqa",
            "--include-path",
            str(tmp_path),
            "--batch-size",
            "2",
            "--max-new-tokens",
            "3",
            "--output",
            str(output),
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    ratio = round(1 - visual_out / visual_in, 4)
    row = re.search(
        r"^tiny_vqa\s+exact_match,none\s+(\S+)\s+(\d+)/(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$",
        out,
        re.MULTILINE,
    )
    assert row, out
    assert float(row[1]) == 0.5
    assert (int(row[2]), int(row[3])) == (visual_out, visual_in)
    assert float(row[4]) == ratio and 0 < float(row[5]) < 1  # fewer tokens, fewer FLOPs
    assert float(row[6]) > 0 and float(row[7]) > 0
    assert "model: tiny:qwen2_vl  config: pact" in out and f"wrote {output}" in out
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["results"]["tiny_vqa"]["exact_match,none"] == 0.5
    assert report["pact"]["overall"]["reduction_ratio"] == ratio
    assert report["pact"]["overall"]["requests"] == 4
    assert report["pact_config"] == pact.PactConfig.load("pact").model_dump(mode="json")


def test_every_option_has_help():
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    parser = commands.choices["eval"]
    options = [action for action in parser._actions if action.option_strings]
    assert {
        "--model",
        "--tasks",
        "--config",
        "--set",
        "--limit",
        "--batch-size",
        "--output",
        "--device",
    } <= {name for action in options for name in action.option_strings}
    assert all(action.help for action in options)


def test_missing_lmms_eval_says_how_to_install(monkeypatch, capsys, no_model_work):
    monkeypatch.setattr(command, "lmms_eval_available", lambda: False)
    assert main(["eval", "--model", "tiny:llava", "--tasks", "mme"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pact eval: ") and 'pip install "pact-vlm[eval]"' in err


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--batch-size", "0"], r"--batch-size must be at least 1"),
        (["--max-new-tokens", "0"], r"--max-new-tokens must be at least 1"),
        (["--max-pixels", "0"], r"--max-pixels must be at least 1"),
        (["--limit", "0"], r"--limit takes a count or a fraction"),
        (["--limit", "2.5"], r"--limit takes a count or a fraction"),
        (["--output", "/no/such/folder/report.json"], r"--output: folder"),
        (["--include-path", "/no/such/folder"], r"--include-path: '/no/such/folder'"),
        (["--device", "tpu"], r"--device takes cpu, cuda or cuda:N"),
        (["--set", "clusterer.cutof=0.3"], r"--set: .*stages\.0\.clusterer\.cutof"),
        (["--config", "pactt"], r"--config: 'pactt' is neither a config file nor a preset"),
        (["--tasks", " , "], r"--tasks needs at least one task name"),
    ],
)
def test_bad_arguments_are_named_before_any_model_work(
    extra, pattern, capsys, monkeypatch, no_model_work
):
    monkeypatch.setattr(command, "lmms_eval_available", lambda: True)  # checked elsewhere
    argv = ["eval", "--model", "tiny:llava", "--tasks", "tiny_vqa", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.match(r"pact eval: " + pattern, err, re.DOTALL), err


def test_unknown_task_is_named_with_close_names(tmp_path, capsys, monkeypatch, no_model_work):
    pytest.importorskip("lmms_eval")
    import lmms_eval.tasks

    # Index only the local folder: lmms-eval's ~2000 built-in tasks take seconds to index.
    local_only = lmms_eval.tasks.TaskManager

    def manager(verbosity="INFO", include_path=None, include_defaults=True, **kwargs):
        return local_only(verbosity, include_path=include_path, include_defaults=False)

    monkeypatch.setattr(lmms_eval.tasks, "TaskManager", manager)
    write_task(tmp_path, noise_images(4), ["a"] * 4)
    argv = ["eval", "--model", "tiny:llava", "--tasks", "tiny_vq", "--include-path", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--tasks: unknown task 'tiny_vq' (close: tiny_vqa)" in err


CHOICE_YAML = """task: tiny_choice
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: multiple_choice
doc_to_visual: !function tiny_utils.doc_to_visual
doc_to_text: "{{{{question}}}}"
doc_to_choice: ["yes", "no"]
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _choice_losses(images) -> list[dict[str, float]]:
    """HF's loss of ' yes' and of ' no' after each question, with pact attached."""
    from helpers_eval import questions

    from pact.models.tiny_processor import load_tiny

    processor, model = load_tiny(FAMILY)
    losses = []
    for image, question in zip(images, questions(len(images)), strict=True):
        content = [{"type": "image"}, {"type": "text", "text": question}]
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        context = processor(images=[image], text=[prompt], return_tensors="pt")
        row = {}
        for choice in ("yes", "no"):
            full = processor(images=[image], text=[f"{prompt} {choice}"], return_tensors="pt")
            labels = full["input_ids"].clone()
            labels[:, : context["input_ids"].shape[1]] = -100
            with pact.attached(model, "pact"), torch.no_grad():
                row[choice] = model(**full, labels=labels).loss.item()
        losses.append(row)
    return losses


def test_multiple_choice_task_runs_the_simple_form_in_batches(tmp_path, capsys):
    pytest.importorskip("lmms_eval")
    images = noise_images(4)
    # lmms-eval scores a choice right when its loss is the least.
    picks = [min(row, key=row.get) for row in _choice_losses(images)]
    flipped = {"yes": "no", "no": "yes"}
    write_task(tmp_path, images, [*picks[:3], flipped[picks[3]]], CHOICE_YAML, "tiny_choice")
    output = tmp_path / "report.json"
    argv = ["eval", "--model", f"tiny:{FAMILY}", "--tasks", "tiny_choice", "--device", "cpu",
            "--include-path", str(tmp_path), "--batch-size", "auto",
            "--output", str(output)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["interface"] == "simple"  # log-likelihoods go to lmms-eval's simple form
    assert report["results"]["tiny_choice"]["acc,none"] == 0.75
    assert report["pact"]["overall"]["requests"] == 8  # two choices per document
    capsys.readouterr()
    assert main([*argv, "--interface", "chat"]) == 2  # refused before the model loads
    assert "--interface chat: a task scores log-likelihoods" in capsys.readouterr().err
