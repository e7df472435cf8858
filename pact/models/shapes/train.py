"""Train the quality benchmark's VLM from a seed: ``python -m pact.models.shapes.train --out DIR``.

Two stages, each on a fresh, seeded stream of training scenes (never a test scene):

1. **Vision** (:mod:`~pact.models.shapes.vision`): the tower and projector alone, with
   token heads for shape, colour, size, centre and position, until the held-out
   object-token shape accuracy (validation scenes) reaches ``--vision-gate``.
2. **Decoder**: the tower and projector frozen, the decoder learns to answer. Each row
   packs ``--questions`` questions and a description of one scene
   (:mod:`~pact.models.shapes.packing`); early rows keep fewer ground tokens; attention
   guidance (:mod:`~pact.models.shapes.guidance`) points heads of ``--guide-layer`` at the
   objects a question names. Loss: answers and description words, plus the guidance.

At the end the model is scored on the first ``--test-size`` test questions and saved with
``save_pretrained``, with ``training.json`` (settings and every figure) and ``MODEL_CARD.md``
written from it. The shipped weights (``pact/models/shapes/assets``) come from the defaults.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from torch.nn import functional as F

from pact.models.shapes import card
from pact.models.shapes.guidance import AttentionGuide
from pact.models.shapes.model import new_model, pixel_values, visual_features
from pact.models.shapes.packing import IGNORE, PackedRows, pack
from pact.models.shapes.questions import KINDS, make_examples
from pact.models.shapes.score import accuracy_by_kind
from pact.models.shapes.spec import DECODER, IMAGE_TOKENS, VAL_QUESTIONS
from pact.models.shapes.vision import VisionSettings, schedule, train_vision

DECODER_SCENES = 10_000_000
"""First training-scene index of stage 2 (stage 1 draws from 0 up: the streams never meet)."""


@dataclass(frozen=True)
class DecoderSettings:
    """Stage 2's schedule and objective (see the module docstring and ``--help``)."""

    steps: int
    batch_size: int
    questions: int
    descriptions: int
    lr: float
    warmup: int
    ground_start: int
    ground_full_at: float
    guide_layer: int
    guide_weight: float
    guided_kinds: tuple[str, ...]
    check_every: int
    seed: int = 0
    device: str = "cpu"

    def ground(self, step: int) -> int:
        """Ground tokens a row keeps at ``step``: from ``ground_start`` up to all."""
        full = max(1, round(self.ground_full_at * self.steps))
        return round(self.ground_start + (IMAGE_TOKENS - self.ground_start) * min(1.0, step / full))


def packed_loss(model, rows: PackedRows, scenes, device: str) -> torch.Tensor:
    """Cross-entropy of every target of a packed batch (tower and projector frozen)."""
    with torch.no_grad():
        features = visual_features(model, pixel_values([s.image for s in scenes]).to(device))
    kept = torch.cat([features[i, torch.from_numpy(k).to(device)] for i, k in enumerate(rows.kept)])
    input_ids, targets = rows.input_ids.to(device), rows.targets.to(device)
    decoder = model.model.language_model
    embeddings = decoder.embed_tokens(input_ids)
    is_image = (input_ids == model.config.image_token_id)[..., None]
    embeddings = embeddings.masked_scatter(is_image, kept.to(embeddings.dtype))
    hidden = decoder(inputs_embeds=embeddings, attention_mask=rows.attention_mask.to(device),
                     position_ids=rows.position_ids.to(device), use_cache=False).last_hidden_state
    scored = targets != IGNORE
    return F.cross_entropy(model.lm_head(hidden[scored]), targets[scored])


def train_decoder(model, settings: DecoderSettings, log=print) -> dict:
    """Train ``model``'s decoder in place (tower and projector frozen); returns its record."""
    device = settings.device
    frozen = [model.model.vision_tower, model.model.multi_modal_projector]
    for module in frozen:
        module.requires_grad_(False)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=0.01)
    guide = AttentionGuide(model, settings.guide_layer) if settings.guide_weight > 0 else None
    rng, guided = np.random.default_rng([settings.seed, 2]), frozenset(settings.guided_kinds)
    started, losses, checks = time.perf_counter(), [], []
    try:
        for step in range(settings.steps):
            for group in optimizer.param_groups:
                group["lr"] = schedule(step, settings.steps, settings.lr, settings.warmup)
            first = DECODER_SCENES + step * settings.batch_size
            groups = [make_examples("train", first + i, settings.questions)
                      for i in range(settings.batch_size)]  # fmt: skip
            rows = pack(groups, settings.ground(step), rng, settings.descriptions,
                        guided if guide else frozenset())  # fmt: skip
            loss = packed_loss(model, rows, [g[0].scene for g in groups], device)
            guide_loss = guide.loss(rows.guides) if guide and rows.guides else torch.zeros(())
            optimizer.zero_grad(set_to_none=True)
            (loss + settings.guide_weight * guide_loss).backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            losses.append((loss.item(), guide_loss.item()))
            if (step + 1) % settings.check_every == 0 or step + 1 == settings.steps:
                checks.append(_check(model, step, losses, started, device, log))
    finally:
        if guide is not None:
            guide.remove()
        for module in frozen:
            module.requires_grad_(True)
    return {"steps": settings.steps, "seconds": round(time.perf_counter() - started, 1),
            "final_loss": checks[-1]["loss"], "final_guide_loss": checks[-1]["guide_loss"],
            "checks": checks}  # fmt: skip


def _check(model, step: int, losses: list, started: float, device: str, log) -> dict:
    """Losses of the last 50 steps and accuracy on the validation questions."""
    recent = np.asarray(losses[-50:])
    model.eval()
    val = accuracy_by_kind(model, "val", VAL_QUESTIONS, device=device)
    model.train()
    check = {"step": step + 1, "loss": round(float(recent[:, 0].mean()), 4),
             "guide_loss": round(float(recent[:, 1].mean()), 4),
             "val_accuracy": val["accuracy"], "val_by_kind": val["by_kind"]}  # fmt: skip
    log(f"decoder step {step + 1:5d}  loss {check['loss']:.4f}  guide {check['guide_loss']:.4f}"
        f"  {time.perf_counter() - started:7.1f} s  val {val['accuracy']:.3f} {val['by_kind']}")
    return check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pact.models.shapes.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--out", required=True, help="folder to save the model, training.json and MODEL_CARD.md")
    add("--seed", type=int, default=0, help="seed of the weights and of every draw (default: 0)")
    add("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    add("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    add("--test-size", type=int, default=1000,
        help="test questions scored at the end: the card's accuracy (default: 1000)")
    add("--vision-from", metavar="DIR",
        help="skip stage 1: take the tower and projector of a model this script saved "
        "(default: none, stage 1 trains them)")
    add("--vision-steps", type=int, default=2400, help="most stage-1 steps (default: 2400)")
    add("--vision-batch", type=int, default=64, help="stage-1 scenes per step (default: 64)")
    add("--vision-lr", type=float, default=3e-3, help="stage-1 peak learning rate (default: 3e-3)")
    add("--vision-gate", type=float, default=0.95,
        help="stage 1 stops once held-out object-token shape accuracy reaches it (default: 0.95)")
    add("--vision-check-every", type=int, default=200,
        help="stage-1 steps between held-out checks (default: 200)")
    add("--steps", type=int, default=700, help="stage-2 (decoder) steps (default: 700)")
    add("--batch-size", type=int, default=32, help="stage-2 scenes per step (default: 32)")
    add("--questions", type=int, default=16, help="questions packed per scene (default: 16)")
    add("--descriptions", type=int, default=1,
        help="description blocks per scene: objects left to right (default: 1)")
    add("--lr", type=float, default=3e-3, help="stage-2 peak learning rate (default: 3e-3)")
    add("--warmup", type=int, default=100, help="stage-2 warm-up steps (default: 100)")
    add("--ground-start", type=int, default=8,
        help="ground tokens a row keeps at the first stage-2 step, rising to all (default: 8)")
    add("--ground-full-at", type=float, default=0.7,
        help="fraction of stage 2 after which rows keep every token (default: 0.7)")
    add("--guide-layer", type=int, default=2,
        help="decoder layer whose heads are guided (default: 2)")
    add("--guide-weight", type=float, default=0.5, help="weight of the guidance loss; 0: none "
        "(default: 0.5)")
    add("--guided-kinds", default="colour,shape,presence,relation",
        help="question kinds that get guidance (default: colour,shape,presence,relation)")
    add("--check-every", type=int, default=100,
        help="stage-2 steps between validation checks (default: 100)")
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("threads", "test_size", "vision_steps", "vision_batch", "vision_check_every",
                 "steps", "batch_size", "questions", "check_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("lr", "vision_lr"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0")
    if args.descriptions < 0 or args.guide_weight < 0:
        parser.error("--descriptions and --guide-weight must be at least 0")
    if not 0 < args.vision_gate <= 1:
        parser.error("--vision-gate must be in (0, 1]: a held-out accuracy")
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be in [0, --steps)")
    if not 0 <= args.ground_start <= IMAGE_TOKENS or not 0 < args.ground_full_at <= 1:
        parser.error(f"--ground-start must be in [0, {IMAGE_TOKENS}] and --ground-full-at in "
                     "(0, 1]")
    if not 0 <= args.guide_layer < DECODER["layers"]:
        parser.error(f"--guide-layer must be a decoder layer, 0 to {DECODER['layers'] - 1}")
    unknown = set(args.guided_kinds.split(",")) - set(KINDS)
    if unknown:
        parser.error(f"--guided-kinds: unknown {sorted(unknown)}; known: {', '.join(KINDS)}")
    if args.vision_from and not (Path(args.vision_from) / "config.json").is_file():
        parser.error(f"--vision-from: no saved model in {args.vision_from!r}")


def vision_settings(args: argparse.Namespace) -> VisionSettings:
    return VisionSettings(args.vision_steps, args.vision_batch, args.vision_lr, args.vision_gate,
                          args.vision_check_every, seed=args.seed, device=args.device)


def decoder_settings(args: argparse.Namespace) -> DecoderSettings:
    return DecoderSettings(
        args.steps, args.batch_size, args.questions, args.descriptions, args.lr, args.warmup,
        args.ground_start, args.ground_full_at, args.guide_layer, args.guide_weight,
        tuple(args.guided_kinds.split(",")), args.check_every, args.seed, args.device,
    )  # fmt: skip


def train(args: argparse.Namespace, log=print) -> tuple[torch.nn.Module, dict]:
    """Both stages from ``args``; returns the model (eval mode) and the stages' records."""
    torch.set_num_threads(args.threads)
    model = new_model(args.seed).to(args.device).train()
    if args.vision_from:
        from pact.models.shapes.model import load

        saved = load(args.vision_from).model
        model.model.vision_tower.load_state_dict(saved.vision_tower.state_dict())
        model.model.multi_modal_projector.load_state_dict(saved.multi_modal_projector.state_dict())
        vision = {"from": str(args.vision_from), **card_vision(args.vision_from)}
    else:
        vision = train_vision(model, vision_settings(args), log)
    decoder = train_decoder(model, decoder_settings(args), log)
    return model.eval(), {"vision": vision, "decoder": decoder}


def card_vision(folder: str | Path) -> dict:
    """The stage-1 record of a saved model (what ``--vision-from`` reuses)."""
    return json.loads((Path(folder) / "training.json").read_text(encoding="utf-8"))["vision"]


def train_seconds(stages: dict) -> float:
    """Seconds this run trained: a stage reused with ``--vision-from`` ran elsewhere."""
    ran = [stage for stage in stages.values() if "from" not in stage]
    return round(sum(stage.get("seconds", 0.0) for stage in ran), 1)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model, stages = train(args)
    started = time.perf_counter()
    test = accuracy_by_kind(model, "test", args.test_size, device=args.device)
    figures = {
        "command": "python -m pact.models.shapes.train " + " ".join(argv or sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "vision": stages["vision"],
        "decoder": stages["decoder"],
        "train_seconds": train_seconds(stages),
        "test_seconds": round(time.perf_counter() - started, 1),
        "test": test,
        "machine": {"cpu_threads": args.threads, "platform": platform.platform(),
                    "torch": torch.__version__, "transformers": transformers.__version__},
    }  # fmt: skip
    out = Path(args.out)
    model.to("cpu").save_pretrained(out)
    (out / "training.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    (out / "MODEL_CARD.md").write_text(card.render(figures), encoding="utf-8")
    print(json.dumps({k: figures[k] for k in ("train_seconds", "test")}, indent=2))
    return figures


if __name__ == "__main__":
    main()
