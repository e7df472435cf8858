"""Training stage 1: teach the vision tower what each visual token shows.

From scratch, an answer loss alone leaves the tower blind to shape: objects are a few of
144 tokens, and a loss averaged over all tokens is dominated by the ground. So the tower
and projector are first trained alone, with linear heads on the projector's output (the
visual tokens exactly as the decoder receives them) that read, per token:

* ``shape``, ``colour``, ``size`` of the object covering the patch (class 0: ground);
* ``centre``: whether the patch holds an object's centre (one token per object, which is
  what counting needs);
* ``xy``: the covering object's centre, as fractions of the image side (what "left of"
  needs).

Each classification loss weighs object and ground tokens (centre and other tokens) half
and half, so the rare tokens count. Images are flipped left-right at random (targets
follow). The heads are dropped after training: the saved model is a stock
``LlavaForConditionalGeneration``. :func:`probe` scores the heads on held-out scenes:
training stops once object-token shape accuracy on validation scenes reaches its gate,
and the card reports the same figures on test scenes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pact.models.shapes.model import pixel_values, visual_features
from pact.models.shapes.questions import make_scene
from pact.models.shapes.scenes import (
    COLOURS,
    IMAGE_PX,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    shape_mask,
)
from pact.models.shapes.spec import GRID, PATCH_PX, PROBE_SCENES

COVERED = 0.3
"""Fraction of a patch an object must cover for the patch to show that object."""
CLASS_TARGETS = ("shape", "colour", "size", "centre")


def object_patches(obj: SceneObject, flip: bool = False) -> np.ndarray:
    """Raster indices of the patches ``obj`` covers (at least :data:`COVERED` of each),
    and of the patch holding its centre."""
    x = IMAGE_PX - obj.x if flip else obj.x
    mask = shape_mask(obj.shape, x, obj.y, obj.radius)
    cover = mask.reshape(GRID, PATCH_PX, GRID, PATCH_PX).mean(axis=(1, 3)).reshape(-1)
    return np.union1d(np.flatnonzero(cover >= COVERED), [centre_patch(obj, flip)])


def centre_patch(obj: SceneObject, flip: bool = False) -> int:
    """Raster index of the patch that holds ``obj``'s centre."""
    x = IMAGE_PX - obj.x if flip else obj.x
    return min(int(obj.y // PATCH_PX), GRID - 1) * GRID + min(int(x // PATCH_PX), GRID - 1)


def token_targets(scene: Scene, flip: bool = False) -> dict[str, np.ndarray]:
    """Per visual token (raster order): the classes of :data:`CLASS_TARGETS` and ``xy``."""
    targets = {name: np.zeros(GRID * GRID, np.int64) for name in CLASS_TARGETS}
    xy = np.zeros((GRID * GRID, 2), np.float32)
    for obj in scene.objects:
        patches = object_patches(obj, flip)
        targets["shape"][patches] = 1 + SHAPES.index(obj.shape)
        targets["colour"][patches] = 1 + list(COLOURS).index(obj.colour)
        targets["size"][patches] = 1 + list(SIZES).index(obj.size)
        x = IMAGE_PX - obj.x if flip else obj.x
        xy[patches] = (x / IMAGE_PX, obj.y / IMAGE_PX)
        targets["centre"][centre_patch(obj, flip)] = 1
    return {**targets, "xy": xy}


def stacked_targets(scenes: list[Scene], flips: list[bool]) -> dict[str, torch.Tensor]:
    """:func:`token_targets` of a batch, flattened over scenes and tokens."""
    each = [token_targets(scene, flip) for scene, flip in zip(scenes, flips, strict=True)]
    return {name: torch.from_numpy(np.concatenate([t[name] for t in each])) for name in each[0]}


class TokenHeads(nn.Module):
    """Linear read-outs of one visual token: shape, colour, size, centre flag, centre xy."""

    def __init__(self, width: int):
        super().__init__()
        self.shape = nn.Linear(width, 1 + len(SHAPES))
        self.colour = nn.Linear(width, 1 + len(COLOURS))
        self.size = nn.Linear(width, 1 + len(SIZES))
        self.centre = nn.Linear(width, 2)
        self.xy = nn.Linear(width, 2)

    def loss(self, features: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of the balanced classification losses and the xy regression (object tokens)."""
        flat = features.reshape(-1, features.shape[-1])
        on_object = targets["shape"] > 0
        total = sum(_balanced(getattr(self, name)(flat), targets[name], on_object)
                    for name in ("shape", "colour", "size"))  # fmt: skip
        total = total + _balanced(self.centre(flat), targets["centre"], targets["centre"] > 0)
        error = (self.xy(flat) - targets["xy"]).pow(2).sum(dim=1)
        return total + 4.0 * error[on_object].mean()


def _balanced(logits: torch.Tensor, target: torch.Tensor, rare: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the ``rare`` tokens and the others weighing half each."""
    loss = F.cross_entropy(logits, target, reduction="none")
    rare_share = (loss * rare).sum() / rare.sum().clamp(min=1)
    return 0.5 * rare_share + 0.5 * (loss * ~rare).sum() / (~rare).sum().clamp(min=1)


@dataclass(frozen=True)
class VisionSettings:
    """Stage 1's schedule: at most ``steps`` AdamW steps of ``batch_size`` scenes, warm-up then
    cosine decay of ``lr``, stopping early once :func:`probe`'s shape accuracy reaches
    ``gate`` (checked every ``check_every`` steps)."""

    steps: int
    batch_size: int
    lr: float
    gate: float
    check_every: int
    warmup: int = 100
    seed: int = 0
    device: str = "cpu"


def train_vision(model, settings: VisionSettings, log=print) -> dict:
    """Train ``model``'s tower and projector in place; returns the record of stage 1."""
    device = settings.device
    heads = TokenHeads(model.config.text_config.hidden_size).to(device)
    trained = [*model.model.vision_tower.parameters(),
               *model.model.multi_modal_projector.parameters()]  # fmt: skip
    parameters = [*trained, *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=0.01)
    flips = np.random.default_rng([settings.seed, 1])
    started, losses, checks = time.perf_counter(), [], []
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule(step, settings.steps, settings.lr, settings.warmup)
        scenes = [make_scene("train", step * settings.batch_size + i)
                  for i in range(settings.batch_size)]  # fmt: skip
        flipped = list(flips.random(len(scenes)) < 0.5)
        images = [s.image[:, ::-1] if f else s.image for s, f in zip(scenes, flipped, strict=True)]
        features = visual_features(model, pixel_values(images).to(device))
        targets = {k: v.to(device) for k, v in stacked_targets(scenes, flipped).items()}
        loss = heads.loss(features, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % settings.check_every == 0 or step + 1 == settings.steps:
            figures = probe(model, heads, "val", device=device)
            checks.append({"step": step + 1, **figures})
            log(f"vision step {step + 1:5d}  loss {np.mean(losses[-50:]):.4f}  "
                f"{time.perf_counter() - started:7.1f} s  held-out {figures}")  # fmt: skip
            if figures["shape"] >= settings.gate:
                break
    seconds = round(time.perf_counter() - started, 1)
    return {"steps": step + 1, "seconds": seconds, "gate": settings.gate,
            "gate_reached": checks[-1]["shape"] >= settings.gate,
            "test_probe": probe(model, heads, "test", device=device), "checks": checks}  # fmt: skip


def schedule(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 5% of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def probe(model, heads: TokenHeads, split: str, size: int = PROBE_SCENES,
          device: str = "cpu") -> dict:  # fmt: skip
    """Held-out accuracy of the token heads on the first ``size`` scenes of ``split``
    ("val" steers training, "test" goes on the card): shape, colour and size on object
    tokens, ground recognised as ground, centre recall and precision, and the mean error
    of the centre's x in pixels."""
    was_training = model.training
    model.eval()
    scenes = [make_scene(split, index) for index in range(size)]
    features = torch.cat([
        visual_features(model, pixel_values([s.image for s in scenes[i:i + 100]]).to(device))
        for i in range(0, size, 100)
    ]).flatten(0, 1)  # fmt: skip
    targets = {k: v.to(device) for k, v in stacked_targets(scenes, [False] * size).items()}
    model.train(was_training)
    on_object = targets["shape"] > 0
    figures = {name: _accuracy(getattr(heads, name)(features), targets[name], on_object)
               for name in ("shape", "colour", "size")}  # fmt: skip
    figures["ground"] = _accuracy(heads.shape(features), targets["shape"], ~on_object)
    centre = heads.centre(features).argmax(dim=1) == 1
    figures["centre_recall"] = centre[targets["centre"] == 1].float().mean().item()
    figures["centre_precision"] = (targets["centre"][centre] == 1).float().mean().item()
    x_error = (heads.xy(features)[:, 0] - targets["xy"][:, 0]).abs()[on_object]
    figures["x_error_px"] = x_error.mean().item() * IMAGE_PX
    return {name: round(value, 4) for name, value in figures.items()}


def _accuracy(logits: torch.Tensor, target: torch.Tensor, where: torch.Tensor) -> float:
    return (logits.argmax(dim=1)[where] == target[where]).float().mean().item()
