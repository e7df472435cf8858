"""Train the quality benchmark's VLM from scratch: ``python -m pact.models.shapes.train``.

Every step draws fresh scenes from the train split (an endless, seeded stream, so the
model never sees a test scene) with several questions each, takes one AdamW step on the
mean cross-entropy of the answer tokens, and follows a warm-up + cosine learning-rate
schedule.  At the end the model is scored on the test split and saved with
``save_pretrained`` together with ``training.json`` (the settings and figures) and
``MODEL_CARD.md`` written from it.

The shipped weights (``pact/models/shapes/assets``) come from the default settings; the model
card records the exact command, time and accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

from pact.models.shapes import card
from pact.models.shapes.auxiliary import PatchSupervision
from pact.models.shapes.model import card_figures, load, new_model, training_batch
from pact.models.shapes.questions import make_examples
from pact.models.shapes.scenes import MAX_OBJECTS
from pact.models.shapes.score import accuracy_by_kind

DEFAULTS = dict(steps=1200, batch_size=32, questions=4, curriculum=0, aux_weight=1.0,
                lr=2e-3, warmup=100, weight_decay=0.01, seed=0, test_size=1000, threads=2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pact.models.shapes.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to save the model, record and card")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                        help="examples per step")
    parser.add_argument("--questions", type=int, default=DEFAULTS["questions"],
                        help="questions asked about each training scene")  # fmt: skip
    parser.add_argument("--curriculum", type=int, default=DEFAULTS["curriculum"],
                        help="steps over which scenes grow from 1 to 4 objects (0: none)")
    parser.add_argument("--aux-weight", type=float, default=DEFAULTS["aux_weight"],
                        help="weight of the per-token object loss (pact.models.shapes.auxiliary; "
                        "0: answers only)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=DEFAULTS["warmup"],
                        help="steps of linear warm-up before the cosine decay")
    parser.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"],
                        help="AdamW weight decay")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="initialisation seed")
    parser.add_argument("--test-size", type=int, default=DEFAULTS["test_size"],
                        help="test-split examples scored at the end (the card's accuracy)")
    parser.add_argument("--threads", type=int, default=DEFAULTS["threads"],
                        help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--init", metavar="DIR",
                        help="continue from a model this script saved (its record is kept "
                        "as the new record's 'previous'); default: a fresh model")  # fmt: skip
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "questions", "test_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be in [0, --steps)")
    return args


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up to ``args.lr``, then cosine decay to 5% of it."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def scenes_seen(figures: dict) -> int:
    """Training scenes drawn by a saved run and the runs it continued."""
    settings, previous = figures["settings"], figures.get("previous")
    return settings["steps"] * settings["batch_size"] + (scenes_seen(previous) if previous else 0)


def step_loss(model, aux: PatchSupervision, step: int, args: argparse.Namespace,
              first_scene: int = 0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Mean cross-entropy of every answer in the step's batch of fresh training scenes,
    and the auxiliary per-token object loss (:mod:`pact.models.shapes.auxiliary`)."""
    most = MAX_OBJECTS
    if step < args.curriculum:  # 1 object per scene at first, one more every stretch
        most = 1 + step * MAX_OBJECTS // args.curriculum
    start = first_scene + step * args.batch_size  # a continued run draws new scenes
    groups = [make_examples("train", start + i, args.questions, most)
              for i in range(args.batch_size)]  # fmt: skip
    inputs = {k: v.to(args.device) for k, v in training_batch(groups).items()}
    answer_at, answers = inputs.pop("answer_at"), inputs.pop("answers")
    logits = model(**inputs, use_cache=False).logits
    picked = logits.gather(1, answer_at.clamp(min=0)[..., None].expand(-1, -1, logits.shape[-1]))
    answer_loss = torch.nn.functional.cross_entropy(picked.flatten(0, 1), answers.flatten())
    return answer_loss, aux.loss([group[0].scene for group in groups])


def train(args: argparse.Namespace, log=print) -> tuple[torch.nn.Module, dict]:
    """Train a fresh model; returns it (in eval mode) and the per-step loss record."""
    torch.set_num_threads(args.threads)
    model = (new_model(args.seed) if args.init is None else load(args.init))
    model = model.to(args.device).train()
    first_scene = 0 if args.init is None else scenes_seen(card_figures(args.init))
    aux = PatchSupervision(model).to(args.device)
    parameters = [*model.parameters(), *aux.head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)
    losses, aux_losses, started = [], [], time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        answer_loss, aux_loss = step_loss(model, aux, step, args, first_scene)
        optimizer.zero_grad(set_to_none=True)
        (answer_loss + args.aux_weight * aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        losses.append(answer_loss.item())
        aux_losses.append(aux_loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            recent, recent_aux = (sum(v[-50:]) / len(v[-50:]) for v in (losses, aux_losses))
            log(f"step {step:5d}  answer loss {recent:.4f}  token loss {recent_aux:.4f}  "
                f"{time.perf_counter() - started:7.1f} s")  # fmt: skip
    aux.remove()
    return model.eval(), {"seconds": time.perf_counter() - started, "losses": losses}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model, record = train(args)
    started = time.perf_counter()
    scores = accuracy_by_kind(model, "test", args.test_size, device=args.device)
    figures = {
        "command": "python -m pact.models.shapes.train " + " ".join(argv or sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "train_seconds": round(record["seconds"], 1),
        "test_seconds": round(time.perf_counter() - started, 1),
        "final_loss": round(sum(record["losses"][-50:]) / len(record["losses"][-50:]), 4),
        "test": scores,
        "machine": {"cpu_threads": args.threads, "platform": platform.platform(),
                    "torch": torch.__version__, "transformers": transformers.__version__},
    }
    if args.init is not None:
        figures["previous"] = card_figures(args.init)
    out = Path(args.out)
    model.to("cpu").save_pretrained(out)
    (out / "training.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    (out / "MODEL_CARD.md").write_text(card.render(figures), encoding="utf-8")
    print(json.dumps({k: figures[k] for k in ("train_seconds", "final_loss", "test")}, indent=2))
    return figures


if __name__ == "__main__":
    main()
