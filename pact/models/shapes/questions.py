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
SPLIT_SEEDS = {"train": 1, "test": 2, "val": 3}
"""Seeds of the splits: training streams, the test split (every reported figure), and
validation scenes that steer training (stage 1's gate, stage 2's checks)."""
MIN_SIDE_GAP_PX = 8.0  # horizontal centre distance below which "left of" is not asked


@dataclass(frozen=True)
class Example:
    """A scene, a question about it and its one-word answer.

    ``referents`` are the objects the question names, one group per noun phrase in the
    order the question names them (a relation names two; a count names every object it
    counts; an absent colour-shape pair names none). Training points attention at them
    (:mod:`pact.models.shapes.guidance`); evaluation never reads them.
    """

    scene: Scene
    kind: str
    question: str
    answer: str
    referents: tuple[tuple[SceneObject, ...], ...] = ()

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
    """The ``index``-th example of ``split`` ("train", "val" or "test"), the same on every run."""
    return make_examples(split, index, 1)[0]


def make_scene(split: str, index: int) -> Scene:
    """The ``index``-th scene of ``split``: the scene that :func:`make_examples` asks about."""
    return render_scene(_generator(split, index))


def _generator(split: str, index: int) -> np.random.Generator:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    return np.random.default_rng([SPLIT_SEEDS[split], index])


def make_examples(split: str, index: int, count: int, max_objects: int = MAX_OBJECTS
                  ) -> list[Example]:  # fmt: skip
    """``count`` questions about the ``index``-th scene of ``split``; the first is
    :func:`make_example`'s (training asks several per scene, the test split one).
    ``max_objects`` caps the objects drawn (a training curriculum starts with fewer)."""
    rng = _generator(split, index)
    scene = render_scene(rng, max_objects)
    return [ask(scene, rng) for _ in range(count)]


def ask(scene: Scene, rng: np.random.Generator) -> Example:
    """A question of a random kind that this scene can answer (the test split's draw)."""
    kinds = [kind for kind in KINDS if kind != "relation" or _relation_pairs(scene)]
    for _ in range(20):
        kind = kinds[rng.integers(len(kinds))]
        asked = ASK[kind](scene, rng)
        if asked is not None:
            return Example(scene, kind, f"{asked[0]} ?", asked[1], asked[2])
    # every scene has an object, and a presence question always exists
    question, answer, referents = _ask_presence(scene, rng)
    return Example(scene, "presence", f"{question} ?", answer, referents)


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
    return None if name is None else (f"what color is the {name}", target.colour, ((target,),))


def _ask_shape(scene: Scene, rng: np.random.Generator):
    target = scene.objects[rng.integers(len(scene.objects))]
    name = _name_by_colour(scene, target)
    return None if name is None else (f"what shape is the {name}", target.shape, ((target,),))


def _ask_count(scene: Scene, rng: np.random.Generator):
    """Count a colour or a shape; a quarter of the time one that may be absent."""
    if rng.random() < 0.25:
        attributes = [*COLOURS, *SHAPES]
        attribute = attributes[rng.integers(len(attributes))]
    else:
        target = scene.objects[rng.integers(len(scene.objects))]
        attribute = (target.colour, target.shape)[rng.integers(2)]
    if attribute in COLOURS:
        counted = tuple(o for o in scene.objects if o.colour == attribute)
        return f"how many {attribute} objects are there", COUNT_WORDS[len(counted)], (counted,)
    counted = tuple(o for o in scene.objects if o.shape == attribute)
    return f"how many {PLURALS[attribute]} are there", COUNT_WORDS[len(counted)], (counted,)


def _ask_presence(scene: Scene, rng: np.random.Generator):
    """Half yes; the no-pairs share a colour or a shape with the scene when they can."""
    present = {(o.colour, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        colour, shape = sorted(present)[rng.integers(len(present))]
        named = tuple(o for o in scene.objects if (o.colour, o.shape) == (colour, shape))
        return f"is there a {colour} {shape}", "yes", (named,)
    near = sorted(
        (c, s) for c in COLOURS for s in SHAPES
        if (c, s) not in present and any(c == o.colour or s == o.shape for o in scene.objects)
    )
    colour, shape = near[rng.integers(len(near))]
    return f"is there a {colour} {shape}", "no", ((),)


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
    return question, "yes" if first.x < second.x else "no", ((first,), (second,))


ASK = {
    "colour": _ask_colour,
    "shape": _ask_shape,
    "count": _ask_count,
    "presence": _ask_presence,
    "relation": _ask_relation,
}
