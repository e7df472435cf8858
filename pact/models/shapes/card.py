"""The model card, written from the training record so that its figures are the measured ones."""

from __future__ import annotations

from pact.models.shapes.questions import ANSWERS, KINDS
from pact.models.shapes.score import SUBSET, blind_accuracy, examples
from pact.models.shapes.spec import (
    DECODER,
    IMAGE_TOKENS,
    PATCH_PX,
    PROBE_SCENES,
    VAL_QUESTIONS,
    VISION,
)


def _blind(test: dict) -> str:
    """The blind guess's accuracy on the examples the model was scored on."""
    return f"{blind_accuracy(examples('test', test['examples'])):.3f}"


def _interval(bounds) -> str:
    return f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


def _vision(figures: dict) -> str:
    vision = figures["vision"]
    probe = vision["test_probe"]
    origin = f"reused from `{vision['from']}`; " if "from" in vision else ""
    return (
        f"{origin}{vision['steps']} steps, {vision['seconds']} s; gate: validation shape "
        f"accuracy >= {vision['gate']} "
        f"({'reached' if vision['gate_reached'] else 'NOT reached'}).\n"
        f"  Held-out token heads on {PROBE_SCENES} test scenes: object-token shape "
        f"**{probe['shape']:.3f}**, colour {probe['colour']:.3f}, size {probe['size']:.3f}; "
        f"ground {probe['ground']:.3f}; centre recall {probe['centre_recall']:.3f}, "
        f"precision {probe['centre_precision']:.3f}; centre x error {probe['x_error_px']:.2f} px."
    )


def _decoder(figures: dict) -> str:
    decoder, settings = figures["decoder"], figures["settings"]
    curve = ", ".join(f"{c['step']}: {c['val_accuracy']:.3f}" for c in decoder["checks"])
    return (
        f"{decoder['steps']} steps x {settings['batch_size']} scenes x {settings['questions']} "
        f"questions (+ {settings['descriptions']} description), {decoder['seconds']} s; "
        f"final loss {decoder['final_loss']}, guidance loss {decoder['final_guide_loss']}.\n"
        f"  Validation accuracy ({VAL_QUESTIONS} questions) by step: {curve}."
    )


def render(figures: dict) -> str:
    """Markdown model card of a trained model from its ``training.json`` figures."""
    test, settings = figures["test"], figures["settings"]
    kinds = "\n".join(
        f"| {kind} | {test['by_kind'][kind]:.3f} | {_interval(test['by_kind_interval'][kind])} |"
        for kind in KINDS if kind in test["by_kind"]
    )  # fmt: skip
    objects = ", ".join(
        f"{n}: {acc:.3f} {_interval(test['by_objects_interval'][n])}"
        for n, acc in test["by_objects"].items()
    )
    machine = figures["machine"]
    return f"""# pact-shapes-vqa (quality benchmark model)

A `LlavaForConditionalGeneration` trained from a seed by `python -m pact.models.shapes.train`
on pact's synthetic visual question answering task (`pact.models.shapes`), so that accuracy
against visual-token reduction can be measured offline (`pact bench quality`). It really
looks at its image: without it, the best guess scores {_blind(test)}. It is a measuring
instrument, not a useful VLM.

## Architecture
- Vision: CLIP vision tower, {VISION['layers']} layers, width {VISION['hidden']}, 96-px image
  in {PATCH_PX}-px patches: {IMAGE_TOKENS} visual tokens (CLS dropped).
- Projector: LLaVA's two-layer MLP.
- Decoder: Qwen2, {DECODER['layers']} layers, hidden {DECODER['hidden']},
  {DECODER['heads']} query / {DECODER['kv_heads']} key-value heads, word-level vocabulary.
- Prompt: `<bos> <image>x{IMAGE_TOKENS} question words ?`; the answer is the next token
  (one of {len(ANSWERS)} words).

## Data
Seeded scenes (`pact.models.shapes.scenes`): 1-4 saturated objects (circle, square,
triangle, cross; five colours; two sizes) on a plain, textured or photographic ground
(crops of scikit-image's bundled photographs), 96 x 96 px. Questions
(`pact.models.shapes.questions`): colour of an object named by shape, shape of an object
named by colour, counts, presence of a colour-shape pair, left-of relations. Training
draws fresh scenes from the train split; validation scenes steer it; the test split
(other seeds) gives every figure below.

## Training
- Command: `{figures['command']}`
- Stage 1, vision (tower + projector, token heads dropped afterwards): {_vision(figures)}
- Stage 2, decoder (tower frozen; packed questions, ground-token dropout, attention
  guidance at layer {settings['guide_layer']}): {_decoder(figures)}
- Time: {figures['train_seconds']} s in all on {machine['cpu_threads']} CPU threads
  ({machine['platform']}; torch {machine['torch']}, transformers {machine['transformers']}).

## Accuracy (greedy answer, first {test['examples']} test questions; 95% Wilson intervals)
Overall: **{test['accuracy']:.3f}** {_interval(test['interval'])}; answering without the
image: {_blind(test)}. On the first {SUBSET} (the regression tests' subset):
{test[f'first_{SUBSET}_correct']}/{SUBSET} correct. By number of objects: {objects}.

| question kind | accuracy | 95% interval |
|---|---|---|
{kinds}
"""


def main(argv: list[str] | None = None) -> None:
    """``python -m pact.models.shapes.card [DIR]``: rewrite DIR's MODEL_CARD.md from its record."""
    import argparse
    from pathlib import Path

    from pact.models.shapes.model import assets_dir, card_figures

    parser = argparse.ArgumentParser(prog="python -m pact.models.shapes.card",
                                     description=main.__doc__)  # fmt: skip
    parser.add_argument("folder", nargs="?", help="model folder (default: the shipped one)")
    folder = Path(parser.parse_args(argv).folder or assets_dir())
    (folder / "MODEL_CARD.md").write_text(render(card_figures(folder)), encoding="utf-8")
    print(f"wrote {folder / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
