"""One-word-answer questions about a :class:`~pact.models.shapes.scenes.Scene`, and the vocabulary.

Five kinds, each answerable only by looking at the image: the colour of an object named
by its shape (and size when needed), the shape of an object named by its colour, how
many objects have a colour or shape, whether a colour-shape pair is present, and whether
one object is left of another.  The referring words always pick out exactly one object;
yes/no answers are balanced.  An example is fully determined by ``(split, index)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pact.models.shapes.scenes import COLOURS, MAX_OBJECTS, SHAPES, Scene, SceneObject, render_scene

KINDS = ("colour", "shape", "count", "presence", "relation")
COUNT_WORDS = ("zero", "one", "two", "three", "four")
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<image>")
PAD_ID, BOS_ID, EOS_ID, IMAGE_ID = range(4)
QUESTION_WORDS = ("what", "color", "shape", "is", "the", "how", "many", "objects", "object",
                  "there", "are", "a", "left", "of", "small", "large", "?")
ANSWERS = (*COLOURS, *SHAPES, "yes", "no", *COUNT_WORDS)
VOCAB = (*SPECIAL_TOKENS, *QUESTION_WORDS, *COLOURS, *SHAPES, *PLURALS.values(), "yes", "no",
         *COUNT_WORDS)
TOKEN_IDS = {word: index for index, word in enumerate(VOCAB)}
SPLIT_SEEDS = {"train": 1, "test": 2}
MIN_SIDE_GAP_PX = 8.0  # horizontal centre distance below which "left of" is not asked


@dataclass(frozen=True)
class Example:
    """A scene, a question about it and its one-word answer."""

    scene: Scene
    kind: str
    question: str
    answer: str

    @property
    def question_ids(self) -> list[int]:
        return encode(self.question)

    @property
    def answer_id(self) -> int:
        return TOKEN_IDS[self.answer]


def encode(text: str) -> list[int]:
    """Token ids of a space-separated question (every word must be in :data:`VOCAB`)."""
    unknown = [word for word in text.split() if word not in TOKEN_IDS]
    if unknown:
        raise ValueError(f"words not in the vocabulary: {unknown}; known: {list(VOCAB)}")
    return [TOKEN_IDS[word] for word in text.split()]


def make_example(split: str, index: int) -> Example:
    """The ``index``-th example of ``split`` ("train" or "test"), the same on every run."""
    return make_examples(split, index, 1)[0]


def make_examples(split: str, index: int, count: int, max_objects: int = MAX_OBJECTS
                  ) -> list[Example]:  # fmt: skip
    """``count`` questions about the ``index``-th scene of ``split``; the first is
    :func:`make_example`'s (training asks several per scene, the test split one).
    ``max_objects`` caps the objects drawn (a training curriculum starts with fewer)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    rng = np.random.default_rng([SPLIT_SEEDS[split], index])
    scene = render_scene(rng, max_objects)
    return [_ask(scene, rng) for _ in range(count)]


def _ask(scene: Scene, rng: np.random.Generator) -> Example:
    """A question of a random kind that this scene can answer."""
    kinds = [kind for kind in KINDS if kind != "relation" or _relation_pairs(scene)]
    for _ in range(20):
        kind = kinds[rng.integers(len(kinds))]
        asked = ASK[kind](scene, rng)
        if asked is not None:
            return Example(scene, kind, f"{asked[0]} ?", asked[1])
    # every scene has an object, and a presence question always exists
    question, answer = _ask_presence(scene, rng)
    return Example(scene, "presence", f"{question} ?", answer)


def _name_by_shape(scene: Scene, target: SceneObject) -> str | None:
    """``"circle"`` or ``"small circle"``: the fewest words naming only ``target``."""
    same_shape = [o for o in scene.objects if o.shape == target.shape]
    if len(same_shape) == 1:
        return target.shape
    if sum(o.size == target.size for o in same_shape) == 1:
        return f"{target.size} {target.shape}"
    return None


def _name_by_colour(scene: Scene, target: SceneObject) -> str | None:
    """``"red object"`` or ``"large red object"``, naming only ``target``."""
    same_colour = [o for o in scene.objects if o.colour == target.colour]
    if len(same_colour) == 1:
        return f"{target.colour} object"
    if sum(o.size == target.size for o in same_colour) == 1:
        return f"{target.size} {target.colour} object"
    return None


def _ask_colour(scene: Scene, rng: np.random.Generator):
    target = scene.objects[rng.integers(len(scene.objects))]
    name = _name_by_shape(scene, target)
    return None if name is None else (f"what color is the {name}", target.colour)


def _ask_shape(scene: Scene, rng: np.random.Generator):
    target = scene.objects[rng.integers(len(scene.objects))]
    name = _name_by_colour(scene, target)
    return None if name is None else (f"what shape is the {name}", target.shape)


def _ask_count(scene: Scene, rng: np.random.Generator):
    """Count a colour or a shape; a quarter of the time one that may be absent."""
    if rng.random() < 0.25:
        attributes = [*COLOURS, *SHAPES]
        attribute = attributes[rng.integers(len(attributes))]
    else:
        target = scene.objects[rng.integers(len(scene.objects))]
        attribute = (target.colour, target.shape)[rng.integers(2)]
    if attribute in COLOURS:
        count = sum(o.colour == attribute for o in scene.objects)
        return f"how many {attribute} objects are there", COUNT_WORDS[count]
    count = sum(o.shape == attribute for o in scene.objects)
    return f"how many {PLURALS[attribute]} are there", COUNT_WORDS[count]


def _ask_presence(scene: Scene, rng: np.random.Generator):
    """Half yes; the no-pairs share a colour or a shape with the scene when they can."""
    present = {(o.colour, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        colour, shape = sorted(present)[rng.integers(len(present))]
        return f"is there a {colour} {shape}", "yes"
    near = sorted(
        (c, s) for c in COLOURS for s in SHAPES
        if (c, s) not in present and any(c == o.colour or s == o.shape for o in scene.objects)
    )
    colour, shape = near[rng.integers(len(near))]
    return f"is there a {colour} {shape}", "no"


def _relation_pairs(scene: Scene) -> list[tuple[SceneObject, SceneObject]]:
    """Ordered object pairs far enough apart horizontally to ask "left of"."""
    return [
        (a, b) for a in scene.objects for b in scene.objects
        if a is not b and abs(a.x - b.x) >= MIN_SIDE_GAP_PX
    ]


def _ask_relation(scene: Scene, rng: np.random.Generator):
    pairs = _relation_pairs(scene)
    if not pairs:
        return None
    first, second = pairs[rng.integers(len(pairs))]
    question = f"is the {first.colour} {first.shape} left of the {second.colour} {second.shape}"
    return question, "yes" if first.x < second.x else "no"


ASK = {
    "colour": _ask_colour,
    "shape": _ask_shape,
    "count": _ask_count,
    "presence": _ask_presence,
    "relation": _ask_relation,
}
