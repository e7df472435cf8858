"""`pact run` on tiny random-weight models (its default, the trained model, is in
test_quality_cli.py) and the prefill benchmark."""

from __future__ import annotations

import re

import pytest
import torch

from pact.bench.prefill import kv_bytes, layer_lengths, measure_prefill
from pact.cli import main
from pact.config import PactConfig
from pact.models.tiny import build, build_shaped

pytestmark = pytest.mark.usefixtures("single_thread")


def test_run_reports_the_reduction(capsys):
    assert main(["run", "--model", "llava", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    tiny = build("llava")
    per_image = tiny.image_tokens()
    # Row 0 holds one image, row 1 two (the demo batch); none keeps them all.
    assert re.search(rf"visual tokens per row\s+{per_image},{2 * per_image}\s", out)
    ratio = float(re.search(r"reduction ratio\s+0\.00\s+([0-9.]+)", out).group(1))
    assert 0.0 < ratio < 1.0
    assert len(re.findall(r"greedy tokens, \w+: \[\[", out)) == 2


def test_run_with_overrides_and_bad_arguments(capsys):
    assert main(["run", "--model", "qwen2_vl", "--config", "euti", "--set", "keep_ratio=0.25",
                 "--max-new-tokens", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    visual_in = [int(v) for v in re.search(r"per row\s+(\d+),(\d+)", out).groups()]
    visual_out = [int(v) for v in re.search(r"per row\s+\d+,\d+\s+(\d+),(\d+)", out).groups()]
    assert visual_out == [max(1, int(0.25 * n)) for n in visual_in]
    assert main(["run", "--model", "nope"]) == 2
    assert "--model must be one of" in capsys.readouterr().err
    assert main(["run", "--set", "clusterer.cutof=1"]) == 2
    assert "stages.0.clusterer.cutof" in capsys.readouterr().err


def test_prefill_report_kv_and_ideal():
    shape = dict(layers=6, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=256)
    tiny = build_shaped(shape, "llava", image_tokens=64)
    batch = tiny.inputs([["text:4", "image", "text:6"]])
    config = PactConfig.load("pact", ["layer=2", "keep_ratio=0.3", "retrieval=false", "alpha=null"])
    report = measure_prefill(tiny.model, batch, config, repeats=1)
    tokens = batch["input_ids"].shape[1]
    removed = report.visual_in - report.visual_out
    assert report.visual_in == int(tiny.visual_mask(batch).sum())
    # Layers 0-1 hold every token, layers 2-5 the reduced sequence.
    assert (
        layer_lengths(6, tokens, config, [_stats(report)]) == [tokens] * 2 + [tokens - removed] * 4
    )
    assert report.kv_bytes_reduced == report.kv_bytes_expected
    assert report.kv_bytes_reduced * (6 * tokens) == report.kv_bytes_none * (
        2 * tokens + 4 * (tokens - removed)
    )
    assert report.ideal_speedup == pytest.approx(6 * tokens / (2 * tokens + 4 * (tokens - removed)))


def _stats(report):
    from pact.tensors import ReductionStats

    return ReductionStats([report.visual_in], [0], [report.visual_out], [0])


def test_kv_bytes_counts_keys_and_values():
    from transformers import DynamicCache

    cache = DynamicCache()
    keys = torch.zeros(1, 2, 5, 8)
    cache.update(keys, keys.clone(), 0)
    assert kv_bytes(cache) == 2 * keys.numel() * 4
