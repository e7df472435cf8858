"""The quality benchmark's task: determinism, splits, and answers read back from the pixels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import ndimage  # scikit-image's own dependency

from pact.models.shapes import questions as q
from pact.models.shapes.scenes import COLOURS, IMAGE_PX, SHAPES, shape_mask

SAMPLE = [q.make_example("test", index) for index in range(300)]


def colour_pixels(image: np.ndarray, colour: str) -> np.ndarray:
    return np.all(image == np.array(COLOURS[colour], dtype=np.uint8), axis=-1)


def test_examples_are_deterministic_and_splits_differ():
    again = q.make_example("test", 7)
    assert np.array_equal(again.scene.image, SAMPLE[7].scene.image)
    assert (again.question, again.answer) == (SAMPLE[7].question, SAMPLE[7].answer)
    first = q.make_examples("test", 7, 3)[0]  # asking several: the first is the same example
    assert (first.question, first.answer) == (again.question, again.answer)
    assert np.array_equal(first.scene.image, again.scene.image)
    train = q.make_example("train", 7)
    assert not np.array_equal(train.scene.image, SAMPLE[7].scene.image)


def test_images_are_uint8_scenes_with_every_background_kind():
    assert all(ex.scene.image.shape == (IMAGE_PX, IMAGE_PX, 3) for ex in SAMPLE)
    assert all(ex.scene.image.dtype == np.uint8 for ex in SAMPLE)
    assert {ex.scene.background for ex in SAMPLE} == {"plain", "texture", "photo"}


def test_each_object_is_drawn_whole_in_its_colour():
    """Objects do not overlap: every pixel of an object's mask shows its exact colour."""
    for ex in SAMPLE[:100]:
        for obj in ex.scene.objects:
            mask = shape_mask(obj.shape, obj.x, obj.y, obj.radius)
            assert colour_pixels(ex.scene.image, obj.colour)[mask].all()


def test_objects_are_a_small_part_of_the_image():
    covered = [
        sum(shape_mask(o.shape, o.x, o.y, o.radius).sum() for o in ex.scene.objects)
        / IMAGE_PX**2
        for ex in SAMPLE
    ]
    assert float(np.mean(covered)) < 0.2


def test_colour_counts_match_connected_regions_of_that_colour():
    """An independent count: connected regions of exactly that colour in the image."""
    counted = [ex for ex in SAMPLE if ex.kind == "count" and ex.question.split()[2] in COLOURS]
    assert len(counted) > 10
    for ex in counted:
        colour = ex.question.split()[2]
        mask = colour_pixels(ex.scene.image, colour)
        regions = ndimage.label(ndimage.binary_opening(mask))[1]  # photos may hold stray pixels
        assert q.COUNT_WORDS[regions] == ex.answer, ex.question


def test_colour_answers_are_the_colour_at_the_named_shape():
    for ex in (ex for ex in SAMPLE if ex.kind == "colour"):
        words = ex.question.split()
        shape = words[-2]
        size = words[-3] if words[-3] in ("small", "large") else None
        named = [o for o in ex.scene.objects if o.shape == shape and size in (None, o.size)]
        assert len(named) == 1, ex.question  # the words name exactly one object
        centre = ex.scene.image[int(named[0].y), int(named[0].x)]
        assert tuple(centre) == COLOURS[ex.answer]


def test_left_of_answers_match_the_pixel_centroids():
    relations = [ex for ex in SAMPLE if ex.kind == "relation"]
    assert len(relations) > 20
    for ex in relations:
        words = ex.question.split()[:-1]  # without the "?"
        centroids = []
        for colour, shape in ((words[2], words[3]), (words[-2], words[-1])):
            obj = next(o for o in ex.scene.objects if (o.colour, o.shape) == (colour, shape))
            mask = shape_mask(shape, obj.x, obj.y, obj.radius) & colour_pixels(
                ex.scene.image, colour
            )
            centroids.append(np.nonzero(mask)[1].mean())
        assert (centroids[0] < centroids[1]) == (ex.answer == "yes"), ex.question


def test_presence_answers_and_yes_no_balance():
    for ex in (ex for ex in SAMPLE if ex.kind == "presence"):
        _, _, _, colour, shape, _ = ex.question.split()
        present = any((o.colour, o.shape) == (colour, shape) for o in ex.scene.objects)
        assert present == (ex.answer == "yes")
    answers = Counter(ex.answer for ex in SAMPLE if ex.answer in ("yes", "no"))
    assert 0.4 < answers["yes"] / (answers["yes"] + answers["no"]) < 0.6


def test_every_kind_is_asked_and_answers_are_one_vocabulary_word():
    assert {ex.kind for ex in SAMPLE} == set(q.KINDS)
    assert all(ex.answer in q.ANSWERS and ex.answer_id == q.TOKEN_IDS[ex.answer] for ex in SAMPLE)
    shapes_asked = {ex.answer for ex in SAMPLE if ex.kind == "shape"}
    assert shapes_asked == set(SHAPES)


def test_unknown_words_and_splits_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"not in the vocabulary.*'what'"):
        q.encode("what is blorp ?")
    with pytest.raises(ValueError, match="split must be one of"):
        q.make_example("validation", 0)
    with pytest.raises(ValueError, match="shape must be one of"):
        shape_mask("hexagon", 10, 10, 5)
