"""``pact bench quality``: accuracy kept vs reduction ratio, per method, on the shipped model.

Each method is a preset (or a preset with a component swapped: ``random`` is EUTI's slot
with the random scorer) whose single strength knob is set, per target ratio, so that it
removes about that fraction of the visual tokens:

* knobs that fix the count (``keep_ratio`` of a scorer, of k-means, DPC, agglomerative)
  are set to ``1 - target`` directly; VisionZip's budget in tokens per image likewise, split
  54:10 between dominant and contextual tokens as in the paper's 64-token setting;
* knobs whose effect depends on the image (PACT's EUTI keep ratio with DBDPC on top,
  DBDPC's cutoff, DBSCAN's eps, ToMe's per-layer merge ratio) are tuned on a calibration
  set of validation images (:func:`pact.bench.tuning.tune`);
* PyramidDrop prunes at three layers (its preset's quarters of 28 layers scaled to the
  model's 6 and rounded down: 1, 3 and 4, the first at the single-stage methods' layer)
  with one keep ratio, tuned like ToMe on the layer-averaged axis (which cannot pass 5/6);
  SparseVLM likewise, at layers 1, 2, 3 (:data:`SPARSEVLM_LAYERS`), its one keep ratio set
  at all three stages (the recycled tokens come on top of it);
* VTW removes every visual token at one layer: its knob is that layer, chosen so that the
  *layer-averaged* ratio is nearest the target, and its points are plotted on that axis.
  ToMe, whose removal grows layer by layer, is tuned and plotted on that axis too: its
  last stage's count would credit it with merges made after the decoder stopped reading
  the image. Stages a preset places beyond the model's last layer are dropped (ToMe's
  preset has one per layer for 8 layers).

Single-stage methods reduce at ``layer`` (default
:data:`pact.models.shapes.model.REDUCTION_LAYER`, 1 of the model's 6), except DivPrune, which
by definition selects on the projector's output (layer 0);
ToMe keeps its one stage per layer from layer 0. Knobs are tuned on validation images, never
on the evaluated ones. The reported ratio is the measured one over the whole evaluation
set, never the target.

:data:`METHODS` is read when the command line builds ``pact bench quality``'s options (for
``pact --help`` too), so what runs a model is imported by the functions that run one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pact.config import PactConfig

if TYPE_CHECKING:
    from pact.models.shapes.questions import Example


@dataclass(frozen=True)
class Method:
    """A preset, extra overrides, and how its strength knob is set."""

    preset: str
    knob: str
    setting: str  # "exact" (1 - target), "tokens" (VisionZip), "tuned" or "layer" (VTW)
    overrides: tuple[str, ...] = ()
    bounds: tuple[float, float] = (0.0, 1.0)
    increasing: bool = True  # removal grows with the knob
    single_stage: bool = True
    placed: bool = True  # a single stage moved to the benchmark's layer (DivPrune: stays at 0)

    @property
    def layer_averaged(self) -> bool:
        """Whether the method is tuned and plotted at its layer-averaged ratio (its removal
        differs from layer to layer: VTW, progressive ToMe, PyramidDrop, SparseVLM)."""
        return self.setting == "layer" or not self.single_stage


PYRAMIDDROP_LAYERS = ("stages.0.layer=1", "stages.1.layer=3", "stages.2.layer=4")
"""PyramidDrop's layers 7, 14, 21 of 28, scaled to the shipped model's 6 and rounded down."""
SPARSEVLM_LAYERS = ("stages.0.layer=1", "stages.1.layer=2", "stages.2.layer=3")
"""SparseVLM's layers 3, 7, 16 (the official outputs of 2, 6, 15 of 32 layers) on the shipped
model's 6: the first where the single-stage methods act (the layer FastV's K = 2 maps to, as
SparseVLM's first stage is the same place in its paper), the last at half the decoder (16
of 32), the second between them (scaled and rounded down, the first two would share layer
0 and the first would act on the projector's output)."""
METHODS: dict[str, Method] = {
    "pact": Method("pact", "keep_ratio", "tuned", bounds=(0.02, 1.0), increasing=False),
    "dbdpc": Method("dbdpc", "clusterer.cutoff", "tuned"),
    "euti": Method("euti", "keep_ratio", "exact"),
    "fastv": Method("fastv", "keep_ratio", "exact"),
    "fastv_mean": Method("fastv", "keep_ratio", "exact", overrides=("scorer.query=all",)),
    "dart": Method("dart", "keep_ratio", "exact"),
    "divprune": Method("divprune", "keep_ratio", "exact", placed=False),
    "pyramiddrop": Method(
        "pyramiddrop",
        "keep_ratio",
        "tuned",
        increasing=False,
        single_stage=False,
        overrides=PYRAMIDDROP_LAYERS,
    ),
    "sparsevlm": Method(
        "sparsevlm",
        "keep_ratio",
        "tuned",
        increasing=False,
        single_stage=False,
        overrides=SPARSEVLM_LAYERS,
    ),
    "tome": Method("tome", "clusterer.merge_ratio", "tuned", bounds=(0.0, 0.5), single_stage=False),
    "kmeans": Method("kmeans", "clusterer.keep_ratio", "exact"),
    "dbscan": Method("dbscan", "clusterer.eps", "tuned"),
    "dpc": Method("dpc", "clusterer.keep_ratio", "exact"),
    "agglomerative": Method("agglomerative", "clusterer.keep_ratio", "exact"),
    "vtw": Method("vtw", "layer", "layer"),
    "visionzip": Method("visionzip", "keep_tokens", "tokens", placed=False),
    "visionzip_mean": Method("visionzip", "keep_tokens", "tokens", placed=False,
                             overrides=("stages.0.scorer.query=mean",)),
    "random": Method("euti", "keep_ratio", "exact", overrides=("scorer.name=random",)),
}
"""The methods of the paper's comparisons that pact implements, by label."""
DEFAULT_RATIOS = (0.3, 0.5, 0.7, 0.9)
DEFAULT_METHODS = ("pact", "dbdpc", "euti", "fastv", "dart", "divprune", "pyramiddrop",
                   "sparsevlm", "visionzip", "tome", "kmeans", "vtw", "random")  # fmt: skip
"""What a plain ``pact bench quality`` runs: every kind of method once (about 5 minutes on
2 CPU threads). ``--methods all`` adds the variants that tie with these on this task
(``fastv_mean``, ``dpc``, ``agglomerative``, ``dbscan``) and ``visionzip_mean``."""


@dataclass
class Setting:
    """One method at one target ratio: the config it runs and how the knob was chosen."""

    method: str
    target: float
    value: float | int
    overrides: list[str]
    layers: int
    """Decoder layers of the model the setting is for."""
    tries: list = field(default_factory=list)

    def config(self) -> PactConfig:
        return PactConfig.load(METHODS[self.method].preset, self.overrides).within(self.layers)


def overrides_for(name: str, value, layer: int, extra=()) -> list[str]:
    """Overrides of method ``name`` with its knob at ``value``, reducing at ``layer``, then
    the user's ``extra`` ones (``pact bench quality --set``), which win."""
    method = METHODS[name]
    moved = method.single_stage and method.placed and method.setting != "layer"
    placed = [f"layer={layer}"] if moved else []
    return [*method.overrides, *placed, f"{method.knob}={value}", *extra]


def choose(model, calibration: dict, name: str, target: float, layer: int, steps: int,
           extra=()) -> Setting:  # fmt: skip
    """The knob value of ``name`` that removes about ``target`` of the visual tokens, with
    the user's ``extra`` overrides applied (tuning included)."""
    method = METHODS[name]
    layers = model.config.text_config.num_hidden_layers
    if method.setting == "exact":
        value = round(1.0 - target, 6)
        return Setting(name, target, value, overrides_for(name, value, layer, extra), layers)
    if method.setting == "layer":
        value = min(layers - 1, max(0, round(layers * (1.0 - target))))
        return Setting(name, target, value, overrides_for(name, value, layer, extra), layers)
    if method.setting == "tokens":
        return _visionzip_setting(name, target, layer, layers, extra)
    setting = _tuned(model, calibration, name, target, layer, steps, user=extra)
    best = min(setting.tries, key=lambda pair: abs(pair[1] - target))[1]
    if name == "pact" and best > target + 0.02:
        # DBDPC alone merges past the target: EUTI takes half the budget, the cutoff the rest.
        keep = round(1.0 - target / 2, 6)
        cut = _tuned(model, calibration, "dbdpc", target, layer, steps, [f"keep_ratio={keep}"],
                     preset="pact", bounds=(0.0, 0.21), user=extra)  # fmt: skip
        cut.method, cut.tries = "pact", setting.tries + cut.tries
        return cut
    return setting


def _visionzip_setting(name: str, target: float, layer: int, layers: int, extra=()) -> Setting:
    """VisionZip's budget per image, split as the paper's 64-token setting (54 dominant, 10
    contextual): ``(1 - target) x`` the image's tokens in all, about 10/64 of them merged."""
    from pact.models.shapes.spec import IMAGE_TOKENS

    budget = max(2, round((1.0 - target) * IMAGE_TOKENS))
    contextual = max(1, round(budget * 10 / 64))
    dominant = budget - contextual
    overrides = overrides_for(name, dominant, layer)
    overrides += [f"stages.0.recycling.clusterer.clusters={contextual}", *extra]
    return Setting(name, target, dominant, overrides, layers)


def _tuned(model, calibration: dict, name: str, target: float, layer: int, steps: int,
           extra: list[str] = (), preset: str | None = None, bounds=None,
           user=()) -> Setting:  # fmt: skip
    """Tune ``name``'s knob on the calibration batch (``extra`` overrides come first, the
    ``user``'s last)."""
    import torch

    from pact.bench.fidelity import layer_averaged_ratio
    from pact.bench.tuning import tune
    from pact.hooks import attached

    method = METHODS[name]
    preset = preset or method.preset
    bounds = bounds or method.bounds
    layers = model.config.text_config.num_hidden_layers

    def overrides(value: float) -> list[str]:
        return [*extra, *overrides_for(name, value, layer, user)]

    def removal(value: float) -> float:
        config = PactConfig.load(preset, overrides(value)).within(layers)
        with attached(model, config) as handle:
            with torch.no_grad():
                model(**calibration, logits_to_keep=1, use_cache=False)
            if method.layer_averaged:
                return layer_averaged_ratio(layers, config, handle.stats.last)
            return handle.stats.reduction_ratio

    guess = (1.0 - target) if not method.increasing else (bounds[0] + bounds[1]) / 2
    value, _, tries = tune(removal, guess, bounds, target, steps, method.increasing)
    return Setting(name, target, value, overrides(value), layers, tries)


def evaluate(model, items: tuple[Example, ...], config: PactConfig | None,
             batch_size: int) -> dict:  # fmt: skip
    """Accuracy with ``config`` attached (``None``: the untouched model) and the ratios."""
    from pact.bench.fidelity import layer_averaged_ratio
    from pact.hooks import attached
    from pact.models.shapes.score import predictions

    if config is None:
        right = predictions(model, items, batch_size)
        return {
            "accuracy": sum(right) / len(right),
            "reduction_ratio": 0.0,
            "layer_averaged_ratio": 0.0,
            "right": right,
        }
    averaged = []  # (visual tokens in, layer-averaged ratio) of each batch

    def after_batch(handle) -> None:
        stages = handle.stats.last
        weight = sum(stages[0].visual_in) if stages else 0
        layers = model.config.text_config.num_hidden_layers
        averaged.append((weight, layer_averaged_ratio(layers, config, stages)))

    with attached(model, config) as handle:
        right = predictions(model, items, batch_size, after_batch=lambda: after_batch(handle))
        ratio = handle.stats.reduction_ratio
    total = sum(weight for weight, _ in averaged)
    return {
        "accuracy": sum(right) / len(right),
        "reduction_ratio": ratio,
        "layer_averaged_ratio": sum(w * r for w, r in averaged) / total if total else 0.0,
        "right": right,
    }
