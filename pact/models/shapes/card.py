"""The model card, written from the training record so that its figures are the measured ones."""

from __future__ import annotations

from pact.models.shapes.model import DECODER, IMAGE_TOKENS, VISION
from pact.models.shapes.questions import ANSWERS, KINDS
from pact.models.shapes.score import SUBSET, blind_accuracy, examples


def _commands(figures: dict) -> str:
    """The command, preceded by those of the runs it continued (``--init``)."""
    chain, record = [], figures
    while record is not None:
        chain.append(f"`{record['command']}` ({record['train_seconds']} s)")
        record = record.get("previous")
    if len(chain) == 1:
        return f"- Command: {chain[0]}"
    total = sum_seconds(figures)
    steps = "\n".join(f"  {i}. {text}" for i, text in enumerate(reversed(chain), 1))
    return f"- Commands, in order (each continues the previous, {total} s in all):\n{steps}"


def sum_seconds(figures: dict) -> float:
    """Training seconds of a run and of every run it continued."""
    previous = figures.get("previous")
    return round(figures["train_seconds"] + (sum_seconds(previous) if previous else 0.0), 1)


TARGET_ACCURACY = 0.85
"""Test accuracy from which the benchmark's curves can rank methods (see docs/quality.md)."""


def _target_note(test: dict) -> str:
    if test["accuracy"] >= TARGET_ACCURACY:
        return ""
    return (f"\n**Interim model**: below the {TARGET_ACCURACY} test accuracy the quality benchmark "
            "needs to rank reduction methods (docs/quality.md, 'Status of the shipped model').\n")


def _blind(test: dict) -> str:
    """The blind guess's accuracy on the examples the model was scored on."""
    return str(round(blind_accuracy(examples("test", test["examples"])), 4))


def render(figures: dict) -> str:
    """Markdown model card of a trained model from its ``training.json`` figures."""
    test, settings = figures["test"], figures["settings"]
    kinds = "\n".join(f"| {kind} | {test['by_kind'].get(kind, '-')} |" for kind in KINDS)
    return f"""# pact-shapes-vqa (quality benchmark model)

A `LlavaForConditionalGeneration` trained from scratch by `python -m pact.models.shapes.train`
on pact's synthetic visual question answering task (`pact.models.shapes`), so that
accuracy against visual-token reduction can be measured offline (`pact bench quality`).
It is a measuring instrument, not a useful VLM.

## Architecture
- Vision: CLIP vision tower, {VISION['layers']} layers, width {VISION['hidden']}, 96-px image in
  6-px patches: {IMAGE_TOKENS} visual tokens (CLS dropped).
- Projector: LLaVA's two-layer MLP.
- Decoder: Qwen2, {DECODER['layers']} layers, hidden {DECODER['hidden']},
  {DECODER['heads']} query / {DECODER['kv_heads']} key-value heads, word-level vocabulary.
- Prompt: `<bos> <image>x{IMAGE_TOKENS} question words ?`; the answer is the next token
  (one of {len(ANSWERS)} words).

## Data
Seeded scenes (`pact.models.shapes.scenes`): 1-4 saturated objects (circle, square, triangle,
cross; five colours; two sizes) on a plain, textured or photographic ground (crops of
scikit-image's bundled photographs), 96 x 96 px. Questions (`pact.models.shapes.questions`):
colour of an object named by shape, shape of an object named by colour, counts,
presence of a colour-shape pair, left-of relations. Training draws a fresh stream from
the train split ({settings['steps']} steps x {settings['batch_size']} scenes x
{settings['questions']} questions); the test split uses other seeds.

## Training
- Objective: cross-entropy of each answer token (several questions per scene, the first
  one seeing exactly the evaluation prompt), plus {settings['aux_weight']} x a per-token
  object loss: a linear head, dropped after training, classifies each projected visual
  token as background or one of the 20 (shape, colour) objects (`pact.models.shapes.auxiliary`).
{_commands(figures)}
- Settings: {', '.join(f'{k}={v}' for k, v in settings.items())}
- Time: {figures['train_seconds']} s on {figures['machine']['cpu_threads']} CPU threads
  ({figures['machine']['platform']}; torch {figures['machine']['torch']},
  transformers {figures['machine']['transformers']}); final training loss
  {figures['final_loss']}.

## Accuracy (greedy answer, first {test['examples']} test examples)
Overall: **{test['accuracy']}**; on the first {SUBSET} (the regression tests' subset):
{test[f'first_{SUBSET}_correct']}/{SUBSET} correct. Answering without the image (each
question kind's most frequent training answer) scores {_blind(test)} on the same examples.
{_target_note(test)}

| question kind | accuracy |
|---|---|
{kinds}
"""


def main(argv: list[str] | None = None) -> None:
    """``python -m pact.models.shapes.card [DIR]``: rewrite DIR's MODEL_CARD.md from its record."""
    import argparse
    from pathlib import Path

    from pact.models.shapes.model import assets_dir, card_figures

    parser = argparse.ArgumentParser(
        prog="python -m pact.models.shapes.card", description=main.__doc__
    )
    parser.add_argument("folder", nargs="?", help="model folder (default: the shipped one)")
    folder = Path(parser.parse_args(argv).folder or assets_dir())
    (folder / "MODEL_CARD.md").write_text(render(card_figures(folder)), encoding="utf-8")
    print(f"wrote {folder / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
