"""Training stage 2's batches: many questions about one image in one row, each seeing only
the image and itself.

A row is ``<bos>``, the visual tokens, then blocks: questions (``what color is the
circle ?``, whose target is the answer after ``?``) and descriptions (``objects two small
red circle large blue square``: the objects left to right, every next word a target). A
4-D attention mask lets each block see the image prefix and its own earlier tokens, never
another block, and each block's position ids continue from the image as they do at
evaluation. So every answer is predicted exactly as :func:`pact.models.shapes.model.batch`
would ask it (tests check this), and the image's cost is shared by all of a row's
questions.

Ground-token dropout: early in training a row may keep only the patches that objects
reach plus a few others (``ground``), each at its original position id. Fewer distractors
make the first steps cheaper and their gradients sharper; the schedule in
:mod:`pact.models.shapes.train` returns to all 144 tokens well before the end, so the
final model is trained on whole images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pact.models.shapes.questions import BOS_ID, COUNT_WORDS, IMAGE_ID, PAD_ID, TOKEN_IDS, Example
from pact.models.shapes.scenes import Scene, shape_mask
from pact.models.shapes.spec import GRID, IMAGE_TOKENS, PATCH_PX
from pact.models.shapes.vision import object_patches

IGNORE = -100
"""Target of positions without one (cross-entropy's ignore index)."""
RIM_PX = 1.5
"""Margin around an object within which a patch counts as touched (it shows the dark rim)."""


@dataclass(frozen=True)
class Guide:
    """Where one attention head should look: from ``query`` (a ``?``) in ``row``, at the
    ``keys`` positions (the named object's tokens, or ``<bos>`` when it is absent)."""

    row: int
    query: int
    head: int
    keys: list[int]


@dataclass
class PackedRows:
    """A packed batch: model inputs, next-token targets and attention guides."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    """``[B, 1, L, L]`` additive float mask (0 where a query may look)."""
    kept: list[np.ndarray]
    """Raster indices of the visual tokens each row keeps, in row order."""
    guides: list[Guide] = field(default_factory=list)


def describe(scene: Scene) -> list[int]:
    """``objects <count> <size> <colour> <shape> ...``: the objects from left to right."""
    words = ["objects", COUNT_WORDS[len(scene.objects)]]
    for obj in sorted(scene.objects, key=lambda o: o.x):
        words += [obj.size, obj.colour, obj.shape]
    return [TOKEN_IDS[word] for word in words]


def touched_patches(scene: Scene) -> np.ndarray:
    """``[144]`` bool: the patches that any object, or its rim, reaches."""
    touched = np.zeros((GRID, GRID), dtype=bool)
    for obj in scene.objects:
        mask = shape_mask(obj.shape, obj.x, obj.y, obj.radius + RIM_PX)
        touched |= mask.reshape(GRID, PATCH_PX, GRID, PATCH_PX).any(axis=(1, 3))
    return touched.reshape(-1)


def kept_patches(scene: Scene, ground: int, rng: np.random.Generator) -> np.ndarray:
    """Every touched patch and ``ground`` others drawn at random (all, when fewer), sorted."""
    touched = touched_patches(scene)
    objects, others = np.flatnonzero(touched), np.flatnonzero(~touched)
    if ground < len(others):
        others = rng.choice(others, ground, replace=False)
    return np.sort(np.concatenate([objects, others]))


def pack(groups: list[list[Example]], ground: int, rng: np.random.Generator,
         descriptions: int = 1, guided: frozenset[str] = frozenset()) -> PackedRows:  # fmt: skip
    """One row per group of questions about one scene (``groups[i][0].scene``), with
    ``descriptions`` description blocks; questions of a kind in ``guided`` get guides."""
    scenes = [group[0].scene for group in groups]
    kept = [kept_patches(scene, ground, rng) for scene in scenes]
    blocks = [_blocks(group, descriptions) for group in groups]
    prefix = 1 + max(len(k) for k in kept)
    length = prefix + max(sum(len(tokens) for tokens, _, _ in row) for row in blocks)
    rows = len(groups)
    input_ids = torch.full((rows, length), PAD_ID)
    targets = torch.full((rows, length), IGNORE)
    positions = torch.zeros((rows, length), dtype=torch.long)
    owner = torch.full((rows, length), -2)  # -1: the image prefix, -2: padding, k: block k
    guides: list[Guide] = []
    for i, (row_blocks, row_kept) in enumerate(zip(blocks, kept, strict=True)):
        input_ids[i, 0], input_ids[i, 1:1 + len(row_kept)] = BOS_ID, IMAGE_ID
        positions[i, 1:1 + len(row_kept)] = torch.from_numpy(row_kept + 1)
        owner[i, :1 + len(row_kept)] = -1
        at = prefix
        for number, (tokens, answers, example) in enumerate(row_blocks):
            end = at + len(tokens)
            input_ids[i, at:end], targets[i, at:end] = torch.tensor(tokens), torch.tensor(answers)
            positions[i, at:end] = torch.arange(1 + IMAGE_TOKENS, 1 + IMAGE_TOKENS + len(tokens))
            owner[i, at:end] = number
            if example is not None and example.kind in guided:
                guides += _guides(example, i, end - 1, row_kept)
            at = end
    return PackedRows(input_ids, targets, positions, block_mask(owner), kept, guides)


Block = tuple[list[int], list[int], "Example | None"]
"""A block's tokens, their targets, and the question it asks (None: a description)."""


def _blocks(group: list[Example], descriptions: int) -> list[Block]:
    """The blocks of a row: its questions, then its description blocks."""
    blocks = []
    for example in group:
        tokens = example.question_ids
        blocks.append((tokens, [IGNORE] * (len(tokens) - 1) + [example.answer_id], example))
    for _ in range(descriptions):
        tokens = describe(group[0].scene)
        blocks.append((tokens, [*tokens[1:], IGNORE], None))
    return blocks


def _guides(example: Example, row: int, query: int, kept: np.ndarray) -> list[Guide]:
    """One guide per group of referents: head ``k`` looks at the ``k``-th named group."""
    guides = []
    for head, objects in enumerate(example.referents):
        patches = np.concatenate([object_patches(obj) for obj in objects] or [np.zeros(0, int)])
        where = np.searchsorted(kept, patches)
        found = where < len(kept)
        found[found] = kept[where[found]] == patches[found]
        keys = (1 + where[found]).tolist() or [0]  # nothing named and kept: look at <bos>
        guides.append(Guide(row, query, head, sorted(set(keys))))
    return guides


def block_mask(owner: torch.Tensor) -> torch.Tensor:
    """``[B, 1, L, L]`` additive mask: causal, a block sees the prefix (owner -1) and itself;
    padding sees only itself (so no softmax row is empty)."""
    length = owner.shape[1]
    query, key = owner[:, :, None], owner[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal & ((key == -1) | (query == key)) | torch.eye(length, dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=torch.float32)
    return mask.masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
