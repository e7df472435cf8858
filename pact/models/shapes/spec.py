"""The shipped model's dimensions and where pact measures reductions on it, without torch.

The command line reads these to build its options and check them before any model work
(``pact --help`` imports no torch); :mod:`pact.models.shapes.model` builds the model from
them.
"""

from __future__ import annotations

from pact.models.shapes.scenes import IMAGE_PX

PATCH_PX = 8
GRID = IMAGE_PX // PATCH_PX
IMAGE_TOKENS = GRID * GRID
DECODER = dict(layers=6, hidden=128, heads=4, kv_heads=2, intermediate=384)
VISION = dict(layers=2, hidden=96, heads=4, intermediate=256)
REDUCTION_LAYER = 1
"""Where pact's commands place a single-stage preset on this model (``pact bench quality``,
``pact run``, ``pact viz``): the input of layer 1 of 6, the presets' layer 4 of 28 scaled
to this depth and rounded up. The decoder reads the image mostly at layer 2 (guided there
in training); after it the visual tokens matter little (docs/quality.md)."""
WEIGHTS_NAME = "model.safetensors"
PROBE_SCENES = 300
"""Held-out scenes the vision stage's token heads are scored on (validation while training,
test for the card)."""
VAL_QUESTIONS = 300
"""Validation questions scored at each of the decoder stage's checks (the card's curve)."""
