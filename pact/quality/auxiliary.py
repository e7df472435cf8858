"""Training-only deep supervision: what each visual token shows, and where.

From scratch, the answer loss alone leaves the model at the answer prior for thousands of
steps: the objects are a few of 256 tokens on busy grounds, and nothing tells the vision
tower which tokens matter until the decoder already looks at them.  Linear heads on the
projector's output (the visual tokens as the decoder receives them) classify each token's
colour, shape and size (or ground), and, for object tokens, their grid row and column
(what "left of" needs).  That makes object tokens distinct, and their attributes linearly
readable, within the first steps.  The heads are dropped after training: the saved model
is a stock ``LlavaForConditionalGeneration`` and never sees these labels.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

from pact.quality.questions import PLURALS, Example
from pact.quality.scenes import COLOURS, GRID, SHAPES, SIZES, Scene

# Each factor's classes; 0 is "ground" for the attributes. Row and column are asked of
# object tokens only (IGNORE elsewhere).
FACTORS = {"colour": 1 + len(COLOURS), "shape": 1 + len(SHAPES), "size": 1 + len(SIZES),
           "row": GRID, "column": GRID}  # fmt: skip
IGNORE = -100


def patch_labels(scene: Scene) -> dict[str, np.ndarray]:
    """Per factor, ``[GRID * GRID]`` labels in the vision tower's raster order."""
    labels = {name: np.zeros(GRID * GRID, dtype=np.int64) for name in ("colour", "shape", "size")}
    labels |= {name: np.full(GRID * GRID, IGNORE, dtype=np.int64) for name in ("row", "column")}
    for obj in scene.objects:
        row, column = obj.cell
        token = row * GRID + column
        labels["colour"][token] = 1 + list(COLOURS).index(obj.colour)
        labels["shape"][token] = 1 + SHAPES.index(obj.shape)
        labels["size"][token] = 1 + list(SIZES).index(obj.size)
        labels["row"][token], labels["column"][token] = row, column
    return labels


class PatchSupervision(nn.Module):
    """Linear per-token classifiers fed by a forward hook on the model's projector."""

    def __init__(self, model: nn.Module):
        super().__init__()
        projector = model.model.multi_modal_projector
        width = projector.linear_2.out_features
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in FACTORS.items()})
        self._features: torch.Tensor | None = None
        self._hook = projector.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self._features = output

    def loss(self, scenes: list[Scene]) -> torch.Tensor:
        """Sum over factors of the cross-entropy of the last forward's visual tokens."""
        if self._features is None:
            raise RuntimeError("no projector output captured: run the model forward first")
        width = self.heads["colour"].in_features
        features, self._features = self._features.reshape(-1, width), None
        per_scene = [patch_labels(scene) for scene in scenes]
        total = features.new_zeros(())
        for name, head in self.heads.items():
            labels = torch.from_numpy(np.concatenate([labels[name] for labels in per_scene]))
            total = total + nn.functional.cross_entropy(
                head(features), labels.to(features.device), ignore_index=IGNORE
            )
        return total

    def remove(self) -> None:
        self._hook.remove()


def referents(example: Example) -> tuple[list[int], list[int]]:
    """Visual-token indices of the objects a question names: those matching every attribute
    word of its first phrase, and of its second ("left of" questions; else the first again).
    Empty where nothing matches (a count of zero, an absent pair)."""
    words = example.question.split()
    phrases = [words]
    if "left" in words:
        cut = words.index("left")
        phrases = [words[:cut], words[cut:]]
    found = [_matching(example.scene, phrase) for phrase in phrases]
    return found[0], found[-1]


def _matching(scene: Scene, words: list[str]) -> list[int]:
    """Tokens of the objects for which every colour, shape and size word of ``words`` holds."""
    singular = {plural: shape for shape, plural in PLURALS.items()}
    named = {singular.get(word, word) for word in words} & {*COLOURS, *SHAPES, *SIZES}
    return [
        obj.cell[0] * GRID + obj.cell[1]
        for obj in scene.objects
        if named <= {obj.colour, obj.shape, obj.size}
    ]


def object_positions(example: Example, first_visual: int = 1) -> tuple[list[int], list[int]]:
    """Where the answer is read from: ``<bos>`` and the named objects' tokens, per phrase
    (``<bos>``'s share of an even split then says how many objects matched)."""
    return tuple([0, *(first_visual + t for t in tokens)] for tokens in referents(example))


def question_positions(example: Example, answer_at: int) -> tuple[list[int], list[int]]:
    """Where the ``?`` at ``answer_at`` gathers its question from: the positions of its
    words, per phrase ("left of" questions: the words before "left", then after "of")."""
    words = example.question.split()[:-1]  # the "?" is at answer_at itself
    first = answer_at - len(words)
    if "left" not in words:
        return list(range(first, answer_at)), list(range(first, answer_at))
    cut = words.index("left")
    return list(range(first, first + cut)), list(range(first + cut + 2, answer_at))


class AttentionSupervision(nn.Module):
    """Training-only guidance of where a ``?`` position looks: at one decoder layer, heads 0
    and 1 of each ``?`` are pulled toward given positions, each in even shares (a
    cross-entropy against the attention weights). Training guides two reads: an early
    layer gathers the question's words (head 1 the second phrase of a "left of"
    question), and a layer after the one where the benchmark reduces reads the named
    objects (:func:`object_positions`), so reductions decide what it still finds. From
    scratch, both are what the answer loss alone learns slowest. The weights are read from
    the layer's output, which only eager attention returns: that layer runs eager
    attention for as long as the guide is on, every other layer stays on sdpa."""

    def __init__(self, model: nn.Module, layer: int):
        super().__init__()
        self._text_config = model.config.text_config
        self._original = self._text_config._attn_implementation
        self._attention = model.model.language_model.layers[layer].self_attn
        _register_guided_attention()
        self._attention.pact_guided = True
        self._text_config._attn_implementation = GUIDED_ATTENTION
        self._weights: torch.Tensor | None = None
        self._hook = self._attention.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self._weights = output[1]

    def loss(self, answer_at: torch.Tensor,
             targets: list[list[tuple[list[int], list[int]]]]) -> torch.Tensor:  # fmt: skip
        """Mean over the ``?`` positions and heads 0, 1 of the cross-entropy between an even
        split over ``targets[row][slot][head]`` and the head's attention there."""
        if self._weights is None:
            raise RuntimeError("no attention weights captured: run the model forward first")
        weights, self._weights = self._weights, None
        wanted = torch.zeros(*answer_at.shape, 2, weights.shape[-1], device=weights.device)
        for row, questions in enumerate(targets):
            for slot, pair in enumerate(questions):
                for head, positions in enumerate(pair):
                    wanted[row, slot, head, positions] = 1.0 / len(positions)
        rows = answer_at.clamp(min=0)[..., None].expand(-1, -1, weights.shape[-1])
        picked = torch.stack([weights[:, head].gather(1, rows) for head in (0, 1)], dim=2)
        per_question = -(wanted * (picked + 1e-6).log()).sum(-1).mean(-1)
        return per_question[answer_at >= 0].mean()

    def remove(self) -> None:
        self._hook.remove()
        del self._attention.pact_guided
        self._text_config._attn_implementation = self._original


GUIDED_ATTENTION = "pact_quality_guided"


def _register_guided_attention() -> None:
    """An attention function that is eager in the guided layer and sdpa elsewhere (eager
    everywhere costs ~70% more time per training step on a CPU)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if GUIDED_ATTENTION in AttentionInterface._global_mapping:
        return
    sdpa = AttentionInterface._global_mapping["sdpa"]

    def guided(module, query, key, value, attention_mask, **kwargs):
        if getattr(module, "pact_guided", False):
            eager = sys.modules[type(module).__module__].eager_attention_forward
            return eager(module, query, key, value, attention_mask, **kwargs)
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(GUIDED_ATTENTION, guided)
    # the additive float mask suits both: eager adds it, sdpa takes it as attn_mask
    AttentionMaskInterface.register(GUIDED_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
