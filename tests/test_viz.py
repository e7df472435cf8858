"""Visualisation: the last call's assignment, token boxes, the overlay, and ``pact viz``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pact
from pact import LayerInputs, QKSource
from pact.cli import build_parser, main
from pact.hooks.families import VLM_FAMILIES, families_with
from pact.models.tiny import FAMILIES, build
from pact.viz import (
    GAP,
    HATCH,
    HATCH_EVERY,
    KEPT,
    MERGE_ALPHA,
    MERGED,
    PRUNED,
    PRUNED_KEEP,
    Geometry,
    cluster_colours,
    render,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# Layer 2, wide clusters and retrieval only close to a center: every status occurs.
OVERRIDES = ["stages.0.layer=2", "stages.0.alpha=0.8", "clusterer.cutoff=0.4"]
CASES = {
    "llava": [["text:3", "image", "text:2"], ["text:1", "image", "text:4"]],
    "llava_next": [["text:3", "image:32x48", "text:2"], ["text:1", "image:40x24", "text:4"]],
    "qwen2_vl": [["text:3", "image:56x84", "text:2"], ["text:1", "image", "text:4"]],
}


@pytest.fixture(scope="module", params=sorted(CASES))
def hooked(request):
    """A tiny model of each family after one reducing forward on a two-row batch."""
    tiny = build(request.param, layers=4)
    batch = tiny.inputs(CASES[request.param])
    handle = pact.attach(tiny.model, "pact", overrides=OVERRIDES)
    with torch.no_grad():
        tiny.model(**batch)
    yield tiny, batch, handle
    handle.detach()


def test_pipeline_assignment_points_members_at_their_merged_token():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 40, 8, generator=generator)
    visual = torch.zeros(2, 40, dtype=torch.bool)
    visual[:, 5:35] = True
    qk = QKSource.from_tensors(torch.randn(2, 2, 40, 4), torch.randn(2, 2, 40, 4))
    sizes = 1.0 + torch.randint(0, 3, (2, 40), generator=generator).float()
    config = pact.PactConfig.load("pact", ["alpha=0.8", "clusterer.cutoff=0.6"])
    reduction = pact.reduce(LayerInputs(hidden, visual, qk, sizes=sizes), config)
    stats = reduction.stats
    for b in range(2):
        assignment = reduction.assignment[b]
        slots = reduction.kept_slots[b, reduction.kept_mask[b]]
        text = torch.nonzero(~visual[b]).flatten()
        assert torch.equal(assignment[text], text)
        removed = int((assignment[visual[b]] == -1).sum())
        assert removed == stats.visual_in[b] - stats.after_prune[b] - stats.retrieved[b]
        # Every surviving slot is pointed at by exactly the sizes it now carries.
        for column, slot in enumerate(slots.tolist()):
            members = assignment == slot
            assert torch.equal(sizes[b, members].sum(), reduction.sizes[b, column])
        assert set(assignment[assignment >= 0].tolist()) == set(slots.tolist())


def test_last_assignment_agrees_with_the_handle_stats(hooked):
    tiny, batch, handle = hooked
    stats = handle.stats.last[0]
    assignment = handle.last_assignment
    assert tuple(assignment.shape) == tuple(batch["input_ids"].shape)
    visual = tiny.visual_mask(batch)
    for b in range(2):
        row = assignment[b]
        text = torch.nonzero(~visual[b]).flatten()
        assert torch.equal(row[text], text)
        removed = int((row[visual[b]] == -1).sum())
        assert removed == stats.visual_in[b] - stats.after_prune[b] - stats.retrieved[b]
        centers = torch.unique(row[visual[b] & (row >= 0)])
        assert centers.numel() == stats.after_merge[b]
        assert bool(visual[b, centers].all()) and torch.equal(row[centers], centers)


def _expected(base: np.ndarray, box, state: int, colour) -> np.ndarray:
    """What the overlay must hold in ``box``, written out from the documented marking."""
    x0, y0, x1, y1 = box
    region = base[y0:y1, x0:x1].astype(np.float32)
    if state == PRUNED:
        region = region * PRUNED_KEEP
        ys, xs = np.mgrid[y0:y1, x0:x1]
        region[(xs + ys) % HATCH_EVERY == 0] = HATCH
    elif state == MERGED:
        region = region * (1 - MERGE_ALPHA) + MERGE_ALPHA * np.asarray(colour, np.float32)
    return np.round(region).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("row", [0, 1])
def test_overlay_marks_exactly_the_pruned_and_merged_tokens(hooked, row):
    tiny, batch, handle = hooked
    scale = 2
    drawn = render(handle, batch, row=row, scale=scale)
    pixels = np.asarray(drawn.image)
    base = drawn.tokens.image.repeat(scale, axis=0).repeat(scale, axis=1)
    assert pixels.shape == base.shape
    slots = torch.nonzero(tiny.visual_mask(batch)[row]).flatten()
    assignment = handle.last_assignment[row]
    # Independent reading of the assignment: -1 pruned; clusters of several tokens merged.
    members = {slot: int((assignment == slot).sum()) for slot in assignment.tolist()}
    colours = cluster_colours(drawn.cluster_of[drawn.status == MERGED])
    assert len(set(colours.values())) == len(colours)  # one colour per cluster
    seen = set()
    for box, slot in zip(drawn.tokens.boxes, slots.tolist(), strict=True):
        target = int(assignment[slot])
        state = PRUNED if target < 0 else MERGED if members[target] > 1 else KEPT
        seen.add(state)
        if box is None:
            continue
        scaled = tuple(v * scale for v in box)
        expected = _expected(base, scaled, state, colours.get(target))
        x0, y0, x1, y1 = scaled
        assert np.array_equal(pixels[y0:y1, x0:x1], expected), (slot, state)
    assert seen == {PRUNED, KEPT, MERGED}
    stats = handle.stats.last[0]
    counts = drawn.counts
    assert counts["kept_alone"] + counts["clusters"] == stats.after_merge[row]
    assert counts["visual_tokens"] == stats.visual_in[row]


def test_anyres_maps_base_tile_crops_and_newlines():
    tiny = build("llava_next")
    batch = tiny.inputs([["text:2", "image:32x48", "text:2"]])
    with pact.attached(tiny.model, "pact", overrides=OVERRIDES) as handle, torch.no_grad():
        tiny.model(**batch)
        drawn = render(handle, batch, scale=1)
    boxes, grid, tile = drawn.tokens.boxes, tiny.layout.grid, tiny.layout.tile
    base, rest = boxes[: grid**2], boxes[grid**2 :]
    assert all(box[2] <= tile for box in base)  # base tile panel on the left
    newlines = [i for i, box in enumerate(rest) if box is None]
    cols = newlines[0]
    assert cols > 0 and newlines == list(range(cols, len(rest), cols + 1))  # one per row
    assert all(box[0] >= tile + GAP for box in rest if box is not None)  # crops panel
    assert len(boxes) == tiny.image_tokens((32, 48))


@pytest.mark.parametrize("family", [family for family in FAMILIES if family not in CASES])
def test_other_families_map_every_placeholder(family):
    tiny = build(family, layers=3)
    batch = tiny.inputs([["text:2", "image:200x100", "text:2"]])
    with pact.attached(tiny.model, "pact", overrides=OVERRIDES) as handle, torch.no_grad():
        tiny.model(**batch)
        drawn = render(handle, batch)
    assert drawn.counts["visual_tokens"] == tiny.image_tokens((200, 100))
    assert drawn.image.size[1] >= 256


@pytest.mark.parametrize("family", FAMILIES)
def test_geometry_from_the_model_config_matches_the_tiny_layout(family):
    tiny = build(family, layers=1)
    geometry = Geometry.from_model(tiny.model)
    assert (geometry.family, geometry.patch) == (family, tiny.layout.patch)
    assert geometry.image_token_id == tiny.image_token_id
    assert geometry.grid == VLM_FAMILIES[family].grid
    if geometry.grid != "merged":
        assert geometry.tile == tiny.layout.tile
        assert geometry.pinpoints == tiny.layout.pinpoints


def test_families_without_a_grid_have_no_geometry():
    for family in families_with(grid=None):
        model = SimpleNamespace(config=SimpleNamespace(model_type=family))
        with pytest.raises(ValueError, match="no token geometry"):
            Geometry.from_model(model)


def test_assignment_is_fixed_size_replaced_per_call_and_cleared_on_detach():
    tiny = build("qwen2_vl", layers=6)
    batch = tiny.inputs([["text:3", "image", "text:2"]])
    two_stages = {"stages": [
        {"layer": 1, "scorer": "euti", "keep_ratio": 0.7, "clusterer": "dbdpc", "retrieval": True},
        {"layer": 3, "scorer": "norm", "keep_ratio": 0.5},
    ]}  # fmt: skip
    handle = pact.attach(tiny.model, two_stages)
    with torch.no_grad():
        tiny.model.generate(**batch, max_new_tokens=3, do_sample=False)
        first = [a.clone() for a in handle.last_assignments]
        tiny.model.generate(**batch, max_new_tokens=3, do_sample=False)
    # Decode steps reduce nothing and leave the prefill's record; a new prefill replaces it.
    assert len(handle.last_assignments) == 2
    for stage, (before, after) in enumerate(zip(first, handle.last_assignments, strict=True)):
        assert tuple(after.shape) == tuple(batch["input_ids"].shape)
        assert torch.equal(before, after)
        row, visual = after[0], tiny.visual_mask(batch)[0]
        centers = torch.unique(row[visual & (row >= 0)])
        assert centers.numel() == handle.stats.last[stage].after_merge[0]
    handle.detach()
    assert handle.last_assignments == [] and handle.last_assignment is None


def test_cli_viz_writes_a_png_and_prints_the_counts(tmp_path, capsys):
    out = tmp_path / "viz.png"
    argv = ["viz", "--model", "llava_next", "--out", str(out), "--image", "32x48"]
    assert main([*argv, "--set", "stages.0.layer=2", "--set", "alpha=0.8"]) == 0
    printed = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in printed
    counts_line = next(line for line in printed.splitlines() if " visual tokens: " in line)
    numbers = [int(word.strip(":,")) for word in counts_line.split() if word.strip(":,").isdigit()]
    total, pruned, alone, merged, clusters, survivors = numbers
    assert total == build("llava_next", layers=1).image_tokens((32, 48))
    assert pruned + alone + merged == total and pruned > 0 and merged > 0
    assert alone + clusters == survivors
    assert f"{survivors} out" in printed  # the stage line from the handle's stats


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model", "llava_2"], "--model must be one of"),
        (["--model", "llava", "--image", "32by32"], "--image must look like HxW"),
        (["--model", "llava", "--image", "32x48"], "--image 32x48: llava images are square"),
        (["--out", "/no/such/dir/x.png"], "--out: directory"),
        (["--config", "none"], "--config 'none' reduces nothing"),
    ],
)
def test_cli_viz_errors_name_the_argument(argv, needle, tmp_path, capsys):
    assert main(["viz", "--out", str(tmp_path / "x.png"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pact viz: ") and needle in err


def test_cli_viz_scale_must_be_positive_and_every_option_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["viz", "--scale", "0"])
    assert exit_info.value.code == 2
    assert "argument --scale" in capsys.readouterr().err
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    for action in commands.choices["viz"]._actions:
        assert action.help, action.dest
