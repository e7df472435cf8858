"""`python -m pact.models.shapes.train`: its two stages, its batches and its record,
checked against independent computations (the stock model's own forward and attention)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers_shapes import SHAPES_TINY_RUN

from pact.models.shapes import card as quality_card
from pact.models.shapes import train
from pact.models.shapes.guidance import AttentionGuide
from pact.models.shapes.model import (
    answer_logits,
    batch,
    card_figures,
    load,
    new_model,
    pixel_values,
    visual_features,
)
from pact.models.shapes.packing import IGNORE, describe, kept_patches, pack
from pact.models.shapes.questions import KINDS, TOKEN_IDS, make_examples, make_scene
from pact.models.shapes.scenes import COLOURS, IMAGE_PX, SHAPES
from pact.models.shapes.score import examples, predictions
from pact.models.shapes.spec import GRID, IMAGE_TOKENS, PATCH_PX
from pact.models.shapes.vision import VisionSettings, object_patches, token_targets, train_vision

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def trained(trained_shapes):
    return trained_shapes


def test_training_script_saves_a_loadable_stock_model_its_record_and_card(trained):
    out, figures = trained
    assert card_figures(out) == figures
    model = load(out)
    assert set(model.state_dict()) == set(new_model(seed=0).state_dict())  # no training heads
    right = predictions(model, examples("test", 16))
    assert figures["test"]["accuracy"] == round(sum(right) / 16, 4)
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "--vision-steps 4" in card and f"**{figures['test']['accuracy']:.3f}**" in card
    assert figures["vision"]["steps"] == 4 and figures["decoder"]["steps"] == 3
    assert set(figures["vision"]["test_probe"]) >= {"shape", "colour", "size", "ground"}


def test_card_command_rewrites_the_card_from_the_record(trained, tmp_path):
    out, figures = trained
    copy = tmp_path / "model"
    copy.mkdir()
    (copy / "training.json").write_text((out / "training.json").read_text())
    quality_card.main([str(copy)])
    assert (copy / "MODEL_CARD.md").read_text() == quality_card.render(figures)


def test_vision_from_reuses_the_tower_and_projector(trained, tmp_path):
    out, first = trained
    args = train.parse_args(["--out", str(tmp_path), "--vision-from", str(out), *SHAPES_TINY_RUN])
    model, stages = train.train(args, log=lambda *_: None)
    saved = load(out)
    for name, value in saved.model.vision_tower.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], value)
    assert stages["vision"]["test_probe"] == first["vision"]["test_probe"]
    # Only the stage that ran counts as this run's training time.
    assert train.train_seconds(stages) == stages["decoder"]["seconds"]


def test_schedule_warms_up_then_decays_to_five_percent():
    from pact.models.shapes.vision import schedule

    rates = [schedule(step, 100, 1.0, 10) for step in range(100)]
    assert rates[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(rates[:10]))
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert rates[-1] == pytest.approx(0.05, abs=0.01)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["--steps", "0"], "--steps"), (["--warmup", "5", "--steps", "5"], "--warmup"),
     (["--guided-kinds", "colour,blorp"], "--guided-kinds"), (["--guide-layer", "6"],
     "--guide-layer"), (["--vision-from", "/no/such"], "--vision-from"),
     (["--lr", "0"], "--lr"), (["--vision-lr", "-1"], "--vision-lr"),
     (["--descriptions", "-1"], "--descriptions"), (["--guide-weight", "-0.5"], "--guide-weight"),
     (["--vision-gate", "1.5"], "--vision-gate"), (["--vision-gate", "0"], "--vision-gate")],
)  # fmt: skip
def test_training_script_refuses_bad_arguments(argv, needle, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--out", "x", *argv])
    assert needle in capsys.readouterr().err


def test_the_vision_stage_stops_at_its_gate():
    model = new_model(seed=0)
    settings = VisionSettings(steps=6, batch_size=2, lr=1e-3, gate=0.0, check_every=2)
    record = train_vision(model, settings, log=lambda *_: None)
    assert record["steps"] == 2 and record["gate_reached"]  # any accuracy passes gate 0


# ------------------------------------------------------------------ targets and referents
def test_token_targets_mark_each_object_and_its_centre_and_follow_a_flip():
    for index in range(20):
        scene = make_scene("train", index)
        targets = token_targets(scene)
        assert targets["centre"].sum() == len(scene.objects)
        near = np.zeros(GRID * GRID, dtype=bool)
        for obj in scene.objects:
            centre = int(obj.y) // PATCH_PX * GRID + int(obj.x) // PATCH_PX
            assert targets["centre"][centre] == 1
            assert targets["shape"][centre] == 1 + SHAPES.index(obj.shape)
            assert targets["colour"][centre] == 1 + list(COLOURS).index(obj.colour)
            np.testing.assert_allclose(targets["xy"][centre], (obj.x / IMAGE_PX, obj.y / IMAGE_PX))
            near[object_patches(obj)] = True
        assert (targets["shape"][~near] == 0).all()
        flipped = token_targets(scene, flip=True)
        mirror = lambda a: a.reshape(GRID, GRID, *a.shape[1:])[:, ::-1]  # noqa: E731
        expected = targets["shape"].reshape(GRID, GRID)
        np.testing.assert_array_equal(mirror(flipped["shape"]), expected)


def test_referents_are_the_objects_each_question_names():
    for index in range(300):
        ex = make_examples("train", index, 1)[0]
        words = ex.question.split()[:-1]
        named = [o for group in ex.referents for o in group]
        if ex.kind == "colour":
            assert len(named) == 1 and named[0].shape == words[-1] and named[0].colour == ex.answer
        elif ex.kind == "shape":
            assert len(named) == 1 and named[0].colour == words[-2] and named[0].shape == ex.answer
        elif ex.kind == "count":
            assert len(named) == ["zero", "one", "two", "three", "four"].index(ex.answer)
        elif ex.kind == "presence":
            assert (len(named) == 1) == (ex.answer == "yes")
            assert all((o.colour, o.shape) == (words[-2], words[-1]) for o in named)
        else:
            (first,), (second,) = ex.referents
            assert (first.colour, first.shape) == (words[2], words[3])
            assert (second.colour, second.shape) == (words[-2], words[-1])
            assert (first.x < second.x) == (ex.answer == "yes")


def test_description_lists_the_objects_left_to_right():
    scene = make_scene("train", 3)
    words = [next(w for w, i in TOKEN_IDS.items() if i == t) for t in describe(scene)]
    ordered = sorted(scene.objects, key=lambda o: o.x)
    assert words[:2] == ["objects", ["zero", "one", "two", "three", "four"][len(ordered)]]
    assert words[2:] == [w for o in ordered for w in (o.size, o.colour, o.shape)]


# ------------------------------------------------------------------ packed rows
def _packed_logits(model, rows, scenes):
    with torch.no_grad():
        features = visual_features(model, pixel_values([s.image for s in scenes]))
        kept = torch.cat([features[i, torch.from_numpy(k)] for i, k in enumerate(rows.kept)])
        decoder = model.model.language_model
        embeddings = decoder.embed_tokens(rows.input_ids).masked_scatter(
            (rows.input_ids == model.config.image_token_id)[..., None], kept)
        hidden = decoder(inputs_embeds=embeddings, attention_mask=rows.attention_mask,
                         position_ids=rows.position_ids, use_cache=False).last_hidden_state
        return model.lm_head(hidden)


def test_every_packed_answer_is_predicted_as_the_evaluation_prompt_asks_it():
    model = new_model(seed=1).eval()
    groups = [make_examples("train", index, 4) for index in range(3)]
    rows = pack(groups, ground=IMAGE_TOKENS, rng=np.random.default_rng(0), descriptions=1)
    logits = _packed_logits(model, rows, [g[0].scene for g in groups])
    for i, group in enumerate(groups):
        at = np.flatnonzero(rows.targets[i].numpy() != IGNORE)
        answers = [p for p in at if rows.input_ids[i, p] == TOKEN_IDS["?"]]
        assert [int(rows.targets[i, p]) for p in answers] == [ex.answer_id for ex in group]
        with torch.no_grad():
            alone = answer_logits(model, batch(group))
        torch.testing.assert_close(logits[i, answers], alone, atol=2e-5, rtol=1e-5)


def test_a_rows_targets_do_not_depend_on_the_padding_other_rows_force_on_it():
    """With ground dropout rows keep different numbers of image tokens, so shorter ones are
    padded after their image: each row's target logits equal those of the row packed alone."""
    model = new_model(seed=3).eval()
    groups = [make_examples("train", 70 + index, 3) for index in range(3)]
    rows = pack(groups, ground=6, rng=np.random.default_rng(4), descriptions=1)
    assert len({len(kept) for kept in rows.kept}) > 1  # the padding under test exists
    logits = _packed_logits(model, rows, [g[0].scene for g in groups])
    for i, group in enumerate(groups):
        rng = np.random.default_rng(4)
        for earlier in groups[:i]:  # the draws that came before row i's in the batch
            kept_patches(earlier[0].scene, 6, rng)
        alone = pack([group], ground=6, rng=rng, descriptions=1)
        assert alone.kept[0].tolist() == rows.kept[i].tolist()
        expected = _packed_logits(model, alone, [group[0].scene])[0]
        packed_at = rows.targets[i] != IGNORE
        alone_at = alone.targets[0] != IGNORE
        assert torch.equal(rows.targets[i][packed_at], alone.targets[0][alone_at])
        torch.testing.assert_close(logits[i][packed_at], expected[alone_at], atol=2e-5, rtol=1e-5)


def test_ground_dropout_keeps_every_object_patch_at_its_position():
    scene = make_scene("train", 5)
    kept = kept_patches(scene, ground=4, rng=np.random.default_rng(0))
    named = np.concatenate([object_patches(o) for o in scene.objects])
    assert set(named) <= set(kept.tolist())
    rows = pack([make_examples("train", 5, 2)], ground=4, rng=np.random.default_rng(0))
    assert rows.position_ids[0, 1:1 + len(rows.kept[0])].tolist() == (rows.kept[0] + 1).tolist()


def test_guidance_loss_is_minus_log_attention_mass_of_the_models_own_attention():
    model = new_model(seed=2, attn="eager").eval()
    groups = [make_examples("train", 40 + index, 6) for index in range(3)]
    rows = pack(groups, ground=20, rng=np.random.default_rng(1), guided=frozenset(KINDS))
    guide = AttentionGuide(model, layer=2)
    with torch.no_grad():
        features = visual_features(model, pixel_values([g[0].scene.image for g in groups]))
        kept = torch.cat([features[i, torch.from_numpy(k)] for i, k in enumerate(rows.kept)])
        decoder = model.model.language_model
        embeddings = decoder.embed_tokens(rows.input_ids).masked_scatter(
            (rows.input_ids == model.config.image_token_id)[..., None], kept)
        out = decoder(inputs_embeds=embeddings, attention_mask=rows.attention_mask,
                      position_ids=rows.position_ids, use_cache=False, output_attentions=True)
        loss = guide.loss(rows.guides)
    guide.remove()
    weights = out.attentions[2]
    expected = torch.stack([-weights[g.row, g.head, g.query, g.keys].sum().log()
                            for g in rows.guides]).mean()  # fmt: skip
    assert len(rows.guides) > 0
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
