"""Why EUTI loses object tokens at layer 2 of the shipped trained model (docs/benchmarks.md).

    python benchmarks/shapes_euti_norms.py [--scenes 200] [--layers 1,2] [--json out.json]

EUTI scores a visual token by a global query's softmax times its hidden state's norm. For
each layer this prints, over the visual tokens of the first ``--scenes`` test scenes:
the ratio of mean hidden norms (object tokens / ground tokens), the ratio of mean
attention parts (the score divided by the norm), and the fraction of object tokens that
EUTI's top half keeps. The scores are the library's own: a plugin scorer (registered here,
as any plugin author would) records what the registered ``euti`` scorer returns while the
``euti`` preset runs at that layer.
"""

from __future__ import annotations

import argparse
import json

import torch

import pact
from pact.models.shapes.model import batch, load
from pact.models.shapes.questions import IMAGE_ID
from pact.models.shapes.score import examples
from pact.models.shapes.vision import token_targets
from pact.registry import register_scorer
from pact.scorers.euti import Euti

RECORDED: list[tuple[torch.Tensor, torch.Tensor]] = []
"""(EUTI scores, hidden norms) of the visual tokens, one pair per reducing forward."""


@register_scorer("recorded_euti")
class RecordedEuti(Euti):
    """The registered EUTI scorer, unchanged, that also records its scores and norms."""

    def score(self, inputs):
        scores = super().score(inputs)
        visual = inputs.real_visual_mask
        count = int(visual[0].sum())
        norms = inputs.hidden.float().norm(dim=-1)
        RECORDED.append((scores[visual].view(-1, count), norms[visual].view(-1, count)))
        return scores


def layer_figures(model, inputs: dict, objects: torch.Tensor, layer: int) -> dict:
    """Norm ratio, attention-part ratio and object tokens kept by the top half at ``layer``."""
    RECORDED.clear()
    overrides = [f"layer={layer}", "scorer.name=recorded_euti", "keep_ratio=0.5"]
    with pact.attached(model, "euti", overrides=overrides), torch.no_grad():
        model(**inputs, logits_to_keep=1, use_cache=False)
    scores, norms = RECORDED[0]
    attention = scores / norms
    kept = torch.zeros_like(objects)
    kept.scatter_(1, scores.topk(scores.shape[1] // 2, dim=1).indices, True)
    ground = ~objects
    return {
        "layer": layer,
        "norm_ratio": round(float(norms[objects].mean() / norms[ground].mean()), 3),
        "attention_ratio": round(float(attention[objects].mean() / attention[ground].mean()), 1),
        "object_tokens_kept_at_half": round(float(kept[objects].float().mean()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200, help="test scenes (default: 200)")
    parser.add_argument("--layers", default="1,2", help="decoder layers (default: 1,2)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    model = load()
    items = list(examples("test", args.scenes))
    inputs = batch(items)
    assert int((inputs["input_ids"] == IMAGE_ID).sum(1).min()) > 0
    objects = torch.stack(
        [torch.from_numpy(token_targets(item.scene)["shape"] > 0) for item in items]
    )
    layers = [int(layer) for layer in args.layers.split(",")]
    figures = [layer_figures(model, inputs, objects, layer) for layer in layers]
    for row in figures:
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump({"scenes": args.scenes, "layers": figures}, stream, indent=2)


if __name__ == "__main__":
    main()
