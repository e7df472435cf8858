"""Training-only deep supervision: which object each visual token shows.

From scratch, the answer loss alone leaves the model at the answer prior for thousands of
steps: the objects are a few of 256 tokens on busy grounds, and nothing tells the vision
tower which tokens matter until the decoder already looks at them. A linear head on the
projector's output (the visual tokens as the decoder receives them) classifies each
token as background or one of the 20 (shape, colour) objects, which makes object tokens
distinct within the first steps. The head is dropped after training: the saved model is
a stock ``LlavaForConditionalGeneration`` and never sees these labels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pact.models.shapes.model import GRID, PATCH_PX
from pact.models.shapes.scenes import COLOURS, SHAPES, Scene, shape_mask

CLASSES = 1 + len(SHAPES) * len(COLOURS)  # background, then (shape, colour) pairs
COVERED = 0.3  # fraction of a patch an object must cover to be that patch's label


def patch_labels(scene: Scene) -> np.ndarray:
    """``[GRID * GRID]`` class per visual token (raster order, as the vision tower emits)."""
    labels = np.zeros((GRID, GRID), dtype=np.int64)
    colours = list(COLOURS)
    for obj in scene.objects:
        mask = shape_mask(obj.shape, obj.x, obj.y, obj.radius)
        cover = mask.reshape(GRID, PATCH_PX, GRID, PATCH_PX).mean(axis=(1, 3))
        pair = SHAPES.index(obj.shape) * len(colours) + colours.index(obj.colour)
        labels[cover >= COVERED] = 1 + pair
    return labels.reshape(-1)


class PatchSupervision(nn.Module):
    """A linear token classifier fed by a forward hook on the model's projector."""

    def __init__(self, model: nn.Module):
        super().__init__()
        projector = model.model.multi_modal_projector
        self.head = nn.Linear(projector.linear_2.out_features, CLASSES)
        self._features: torch.Tensor | None = None
        self._hook = projector.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self._features = output

    def loss(self, scenes: list[Scene]) -> torch.Tensor:
        """Cross-entropy of the last forward's visual tokens against their object labels."""
        if self._features is None:
            raise RuntimeError("no projector output captured: run the model forward first")
        features, self._features = self._features.reshape(-1, self.head.in_features), None
        labels = torch.from_numpy(np.concatenate([patch_labels(s) for s in scenes]))
        return nn.functional.cross_entropy(self.head(features), labels.to(features.device))

    def remove(self) -> None:
        self._hook.remove()
