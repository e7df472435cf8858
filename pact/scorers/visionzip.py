"""VisionZip's dominant tokens: the ones the vision tower's own attention singles out (Yang et
al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025,
https://github.com/dvlab-research/VisionZip).

The official code ranks a CLIP tower's patches by the attention its [CLS] token pays them at
the layer whose output LLaVA reads, summed over heads, and keeps the best (with the [CLS]
token itself, which LLaVA-1.5's "default" feature selection never sends to the language
model: pact keeps only what the model sends, so the whole budget goes to patches). Towers
without a [CLS] token (SigLIP, Qwen2-VL's and Qwen2.5-VL's) have no such query: pact ranks
their tokens by the attention they receive, averaged over heads and over every query of the
image, the usual stand-in for [CLS] attention (pact's fallback; on Qwen-VL a language-model
token is 2x2 merged patches and receives their sum).

The scores come from the tower, so this scorer runs only in a stage placed on the vision
side (``place: vision``), where :attr:`pact.tensors.LayerInputs.tower` is filled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pact.registry import register_scorer
from pact.scorers.base import Scorer, ScorerConfig
from pact.tensors import LayerInputs

if TYPE_CHECKING:
    from torch import Tensor


class VisionZipConfig(ScorerConfig):
    """Settings of VisionZip's dominant-token scorer."""

    reads_tower: ClassVar[bool] = True

    query: Literal["cls", "mean"] | None = None
    """Whose attention ranks the tokens: the [CLS] token's (VisionZip as published), the mean
    over all queries (pact's fallback for towers without [CLS]); None: [CLS] where the tower
    has one, else the mean."""


@register_scorer("visionzip")
class VisionZip(Scorer):
    """Scores each token by the vision tower's attention to it (see the module)."""

    Config = VisionZipConfig

    def score(self, inputs: LayerInputs) -> Tensor:
        tower = inputs.tower
        if tower is None:
            raise ValueError(
                "scorer 'visionzip' reads the vision tower's attention: use it in a stage with "
                "place: vision"
            )
        query = self.config.query or ("cls" if tower.cls is not None else "mean")
        if query == "cls":
            if tower.cls is None:
                raise ValueError(
                    "scorer 'visionzip': query 'cls' needs a tower with a [CLS] token; this one "
                    "has none (use query: mean, or leave it unset)"
                )
            return tower.cls.float()
        return tower.received.float()
