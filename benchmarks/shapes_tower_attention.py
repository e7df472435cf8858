"""Why VisionZip's [CLS] ranking loses object tokens on the shipped trained model.

VisionZip keeps the patches the vision tower's [CLS] token attends to most. The shipped
model's tower was trained with per-token heads only (pact/models/shapes/train.py): nothing
ever read its [CLS] output. For test scenes this prints, at the tower layer VisionZip reads,
the mean score of object tokens over ground tokens and the fraction of object tokens kept
by the top ``--keep`` tokens, for the [CLS] row and for the attention each token receives
on average (pact's fallback for towers without [CLS]).
"""

from __future__ import annotations

import argparse
import json

import torch

from pact.hooks.towers import LlavaTower, cls_attention, received_attention
from pact.models.shapes.model import load, pixel_values
from pact.models.shapes.score import examples
from pact.models.shapes.vision import token_targets


def tower_scores(model, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """``[B, patches]`` [CLS] and mean-received attention at the layer VisionZip reads."""
    tower = LlavaTower(model, None)
    seen = []
    hook = tower.attention.register_forward_pre_hook(
        lambda m, a, kw: seen.append(a[0] if a else kw["hidden_states"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model.model.vision_tower(pixels)
            captured = tower.capture((seen[0],), {})
    finally:
        hook.remove()
    pairs = list(zip(captured.queries, captured.keys, strict=True))
    return {
        "cls": torch.stack([cls_attention(q, k)[1:] for q, k in pairs]),
        "mean": torch.stack([received_attention(q, k)[1:] for q, k in pairs]),
    }


def figures(scores: torch.Tensor, objects: torch.Tensor, keep: int) -> dict:
    top = torch.zeros_like(objects)
    top.scatter_(1, scores.topk(keep, dim=1).indices, True)
    return {
        "object_over_ground": round(float(scores[objects].mean() / scores[~objects].mean()), 3),
        "object_tokens_kept": round(float(top[objects].float().mean()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200, help="test scenes (default: 200)")
    parser.add_argument("--keep", type=int, default=43, help="tokens kept (default: 43 of 144)")
    args = parser.parse_args()
    model = load()
    items = list(examples("test", args.scenes))
    objects = torch.stack(
        [torch.from_numpy(token_targets(item.scene)["shape"] > 0) for item in items]
    )
    scores = tower_scores(model, pixel_values([item.scene.image for item in items]))
    report = {name: figures(value, objects, args.keep) for name, value in scores.items()}
    report["object_share"] = round(float(objects.float().mean()), 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
