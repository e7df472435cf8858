"""``pact bench fidelity``: how close the reduced model stays to the unreduced one.

Same model, same batch. The unreduced model generates greedily; its tokens are then forced
on the reduced model (teacher forcing through ``generate``, so the reduction runs in the
prefill and the decoding steps use the reduced KV cache, exactly as in real generation).
At every step both models' next-token distributions (as greedy decoding sees them, after
the model's own logits processors) are compared:

* KL(unreduced || reduced), at the last prompt position and averaged over the steps;
* top-1 agreement, at the last prompt position and over the steps;
* exact match of greedy generations: a row matches when the reduced model's argmax equals
  the forced token at every step. Given equal prefixes the forced run *is* the reduced
  model's own greedy run, so this equals comparing two free greedy generations, at the
  cost of one ``generate`` instead of two.

Steps after a row's end-of-sequence token are not counted. On the built-in random-weight
models these figures only check the plumbing; they say nothing about real quality.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from pact.bench.tuning import STRENGTHS
from pact.config import PactConfig
from pact.hooks import attached
from pact.models.tiny import TinyVLM, build
from pact.presets import list_presets

ROWS = (
    ("text:6", "image", "text:8"),
    ("text:3", "image", "text:5", "image", "text:4"),
    ("image", "text:10"),
    ("text:12", "image", "text:2"),
)
"""Prompts of the batch: different lengths, image positions and image counts."""
PLUMBING_NOTE = "random-weight tiny model: these figures only check the plumbing, not quality"
X_AXES = {
    "ratio": ("reduction_ratio", "reduction ratio (visual tokens removed, handle.stats)"),
    "layer-averaged": ("layer_averaged_ratio", "visual token-layers removed (layer-averaged)"),
}
"""Plot x-axes: the stats' ratio puts every ``vtw`` point at 1.0 (it withdraws all visual
tokens, only later or earlier); the layer-averaged ratio tells those apart."""


class _Recorder(LogitsProcessor):
    """Keeps the scores greedy decoding sees; optionally forces given tokens.

    Added last to ``generate``'s processors, so the recorded scores are after the model's
    own ones (suppressed tokens at -inf) and the forcing does not show in them.
    """

    def __init__(self, forced: torch.Tensor | None = None):
        self.forced = forced
        self.scores: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.scores.append(scores.detach().float().clone())
        if self.forced is None:
            return scores
        token = self.forced[:, len(self.scores) - 1]
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(1, token[:, None], 0.0)


@dataclass
class Reference:
    """The unreduced model's greedy run: tokens, scores and the steps that count."""

    tokens: torch.Tensor  # [B, T]
    scores: torch.Tensor  # [B, T, V]
    valid: torch.Tensor  # [B, T] bool: steps up to and including a row's first EOS


def _generate(model, batch: dict, new_tokens: int, recorder: _Recorder) -> torch.Tensor:
    with torch.no_grad():
        output = model.generate(
            **batch,
            max_new_tokens=new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([recorder]),
        )
    return output[:, batch["input_ids"].shape[1] :]


def reference(tiny: TinyVLM, batch: dict, new_tokens: int) -> Reference:
    """Greedy generation of the unreduced model, with the scores of every step."""
    recorder = _Recorder()
    tokens = _generate(tiny.model, batch, new_tokens, recorder)
    scores = torch.stack(recorder.scores, dim=1)
    eos = tiny.model.generation_config.eos_token_id
    ended = torch.isin(tokens, torch.tensor(eos if isinstance(eos, list) else [eos]))
    # A step counts if no EOS came strictly before it.
    valid = (ended.cumsum(dim=1) - ended.long()) == 0
    return Reference(tokens=tokens, scores=scores, valid=valid)


def kl_divergence(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(reference) || softmax(other))`` over the last dim, float64.

    Entries at -inf in both (suppressed tokens) have probability 0 and contribute 0.
    """
    log_p = torch.log_softmax(reference.double(), dim=-1)
    log_q = torch.log_softmax(other.double(), dim=-1)
    terms = torch.where(log_p > float("-inf"), log_p.exp() * (log_p - log_q), 0.0)
    # Rounding can leave a sum of about -1e-17 where the two are equal; KL is >= 0.
    return terms.sum(dim=-1).clamp(min=0.0)


def compare(ref: Reference, scores: torch.Tensor) -> dict[str, float]:
    """KL, top-1 agreement and exact match of ``scores`` ([B, T', V]) against ``ref``."""
    steps = scores.shape[1]  # generation stops early when every row has ended
    valid = ref.valid[:, :steps]
    kl = kl_divergence(ref.scores[:, :steps], scores)
    agree = scores.argmax(dim=-1) == ref.tokens[:, :steps]
    return {
        "kl_last": float(kl[:, 0].mean()),
        "kl_steps": float(kl[valid].mean()),
        "top1_last": float(agree[:, 0].float().mean()),
        "top1_steps": float(agree[valid].float().mean()),
        "exact_match": float((agree | ~valid).all(dim=1).float().mean()),
    }


def layer_averaged_ratio(n_layers: int, config: PactConfig, stages: list) -> float:
    """Fraction of visual token-layers removed: the per-layer visual count averaged over the
    decoder (a layer before a stage holds what entered, one after it what that stage left)."""
    if not stages or not sum(stages[0].visual_in):
        return 0.0
    visual_in = sum(stages[0].visual_in)
    after = {stage.layer: sum(stats.after_merge)
             for stage, stats in zip(config.stages, stages, strict=True)}  # fmt: skip
    current, total = visual_in, 0
    for layer in range(n_layers):
        current = after.get(layer, current)
        total += current
    return 1.0 - total / (n_layers * visual_in)


@dataclass
class FidelityPoint:
    """One preset at one strength."""

    preset: str
    knob: str | None
    """Override path of the strength knob (None: the preset as it is)."""
    value: Any
    status: str = "ok"
    reduction_ratio: float | None = None
    """``handle.stats.last_reduction_ratio`` of the prefill (visual tokens removed)."""
    layer_averaged_ratio: float | None = None
    kl_last: float | None = None
    kl_steps: float | None = None
    top1_last: float | None = None
    top1_steps: float | None = None
    exact_match: float | None = None


def plan(presets, strengths: dict[str, tuple[str, tuple]]) -> list[FidelityPoint]:
    """The points to measure: each preset at each value of its knob, or once as it is."""
    points = []
    for preset in presets:
        knob, values = strengths.get(preset, (None, (None,)))
        points += [FidelityPoint(preset, knob, value) for value in values]
    return points


def measure(tiny: TinyVLM, batch: dict, ref: Reference, point: FidelityPoint) -> None:
    """Fill ``point``'s figures (or its error) from one teacher-forced reduced generation."""
    overrides = [] if point.knob is None else [f"{point.knob}={point.value}"]
    try:
        config = PactConfig.load(point.preset, overrides)
        recorder = _Recorder(forced=ref.tokens)
        with attached(tiny.model, config) as handle:
            handle.stats.reset()
            _generate(tiny.model, batch, ref.tokens.shape[1], recorder)
            stages = handle.stats.last
            point.reduction_ratio = handle.stats.last_reduction_ratio
    except Exception as error:  # one failing preset is reported, the others still run
        point.status = f"error: {type(error).__name__}: {error}".splitlines()[0][:200]
        return
    n_layers = len(tiny.model.get_decoder().layers)
    point.layer_averaged_ratio = layer_averaged_ratio(n_layers, config, stages)
    scores = torch.stack(recorder.scores, dim=1)
    for key, value in compare(ref, scores).items():
        setattr(point, key, value)


def default_presets() -> list[str]:
    return [name for name in list_presets() if name != "none"]


def run_fidelity(
    presets=None,
    strengths: dict[str, tuple[str, tuple]] | None = None,
    family: str = "llava",
    text: str = "qwen2",
    new_tokens: int = 8,
    seed: int = 0,
    reference_row: bool = True,
    progress=None,
) -> dict[str, Any]:
    """Every preset (default: all but ``none``) at its strengths, on a tiny model.

    ``presets`` are preset names or config files, not parsed configs: each point's config
    is the preset with its :data:`~pact.bench.tuning.STRENGTHS` knob set to one value.
    ``reference_row`` adds ``none`` itself, whose figures must be exact (KL 0, agreement
    1): a check that attaching is free and the comparison is sound. ``progress``: anything
    with ``update(k)``, advanced once per point. Returns a JSON-ready dict.
    """
    presets = list(default_presets() if presets is None else presets)
    points = plan((["none"] if reference_row else []) + presets, strengths or STRENGTHS)
    tiny = build(family, text=text, seed=seed)
    batch = tiny.inputs([list(row) for row in ROWS], padding_side="left", seed=seed)
    ref = reference(tiny, batch, new_tokens)
    for point in points:
        measure(tiny, batch, ref, point)
        if progress is not None:
            progress.update(1)
    return {
        "benchmark": "fidelity",
        "note": PLUMBING_NOTE,
        "model": f"tiny random-weight {family} ({text} decoder), seed {seed}",
        "rows": [list(row) for row in ROWS],
        "new_tokens": new_tokens,
        "reference_tokens": ref.tokens.tolist(),
        "points": [asdict(point) for point in points],
    }


def plot(report: dict[str, Any], path, x_axis: str = "ratio") -> None:
    """Top-1 agreement and KL vs reduction ratio, one curve per preset (PNG at ``path``)."""
    from pact.bench.plotting import figure, save

    x_key, x_label = X_AXES[x_axis]
    fig, (agreement, kl) = figure(columns=2)
    curves: dict[str, list[dict]] = {}
    for point in report["points"]:
        if point["status"] == "ok" and point["preset"] != "none":
            curves.setdefault(point["preset"], []).append(point)
    for preset, points in curves.items():
        points.sort(key=lambda p: p[x_key])
        ratios = [p[x_key] for p in points]
        agreement.plot(ratios, [p["top1_steps"] for p in points], marker="o", label=preset)
        kl.plot(ratios, [p["kl_steps"] for p in points], marker="o", label=preset)
    agreement.set(xlabel=x_label, ylabel="top-1 agreement with no reduction")
    kl.set(xlabel=x_label, ylabel="KL(none || reduced), mean over steps")
    fig.suptitle(f"Fidelity vs reduction ratio: {report['model']} ({report['note']})",
                 fontsize="small")  # fmt: skip
    save(fig, [agreement, kl], path)
