"""Strength knobs and tuning them to a reduction ratio, shared by the benchmarks.

Every benchmark compares methods at several strengths: :data:`STRENGTHS` names, per preset,
the override path of its one strength knob and three values. ``pact bench speed`` and the
GPU suite's end-to-end section can instead set each knob so that the method removes a
target fraction of the visual tokens: :func:`tune` searches a knob whose removal is
monotone, :func:`removal` measures one value with one prefill, and :func:`tune_method` holds
the special cases of ``pact``, ``fastv`` and ``tome`` (the quality benchmark tunes its own
methods with :func:`tune`).

A benchmark builds the config of each point from a preset *name* and its knob's value, so
the functions here take preset names, never an already parsed config.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pact.config import PactConfig
from pact.hooks import attached

STRENGTHS: dict[str, tuple[str, tuple[float, ...]]] = {
    "pact": ("keep_ratio", (0.8, 0.55, 0.3)),
    "euti": ("keep_ratio", (0.75, 0.5, 0.25)),
    "fastv": ("keep_ratio", (0.75, 0.5, 0.25)),
    "dart": ("keep_ratio", (0.75, 0.5, 0.25)),
    "divprune": ("keep_ratio", (0.75, 0.5, 0.25)),
    "pyramiddrop": ("keep_ratio", (0.75, 0.5, 0.25)),
    "sparsevlm": ("keep_ratio", (0.75, 0.5, 0.25)),
    "dbdpc": ("clusterer.cutoff", (0.1, 0.2, 0.3)),
    "kmeans": ("clusterer.keep_ratio", (0.75, 0.5, 0.25)),
    "dpc": ("clusterer.keep_ratio", (0.75, 0.5, 0.25)),
    "agglomerative": ("clusterer.keep_ratio", (0.75, 0.5, 0.25)),
    "dbscan": ("clusterer.eps", (0.1, 0.15, 0.2)),
    "tome": ("clusterer.merge_ratio", (0.05, 0.1, 0.2)),
    "vtw": ("layer", (6, 4, 2)),
    "visionzip": ("keep_tokens", (48, 32, 16)),
}
"""Per preset, the override path of its strength knob and three values, weakest first.
Values suit the 8-layer tiny models (``vtw`` withdraws at layer 6, 4 or 2 of 8);
``pyramiddrop``'s stages (layers 7, 14, 21) and ``sparsevlm``'s (3, 7, 16; the knob sets all
three stages' keep ratio) need a decoder of 22, resp. 17, layers or more
(``shape:qwen2-0.5b``), or a config file placing them. ``visionzip`` keeps that many dominant
tokens per image, plus its 10 contextual ones (of the tiny LLaVA's 64)."""
METHOD_KNOBS = {"pact": "keep_ratio", "fastv": "keep_ratio", "tome": "clusterer.merge_ratio"}
"""Methods whose tuning (with its special cases) :func:`tune_method` owns, and their knob."""
KNOB_TUNING: dict[str, tuple[Callable[[float], float], tuple[float, float], bool]] = {
    "keep_ratio": (lambda t: 1.0 - t, (0.01, 1.0), False),
    "clusterer.keep_ratio": (lambda t: 1.0 - t, (0.01, 1.0), False),
    "clusterer.cutoff": (lambda t: 0.2, (0.0, 1.0), True),
    "clusterer.eps": (lambda t: 0.15, (0.0, 1.0), True),
}
"""Other knobs: (first guess from the target, bounds, removal increasing in the knob)."""
TOME_STAGES = 8  # the tome preset: one stage per layer 0..7


def tunable(preset: str) -> bool:
    """Whether ``preset`` has a knob that :func:`tune_method` or :func:`tune_knob` tunes."""
    knob = STRENGTHS.get(preset, (None,))[0]
    return preset in METHOD_KNOBS or knob in KNOB_TUNING or knob == "keep_tokens"


def method_config(method: str, value: float, cutoff: float | None = None) -> PactConfig:
    """The preset of ``method`` (pact, fastv or tome) with its tuned knob set to ``value``."""
    if method == "pact":
        overrides = [f"keep_ratio={value}"]
        if cutoff is not None:
            overrides.append(f"clusterer.cutoff={cutoff}")
        return PactConfig.load("pact", overrides)
    if method == "fastv":
        return PactConfig.load("fastv", [f"keep_ratio={value}"])
    if method == "tome":
        return PactConfig.load("tome", [f"clusterer.merge_ratio={value}"])
    raise ValueError(f"method must be pact, fastv or tome; got {method!r}")


def config_of(method: str, tuned: dict) -> PactConfig:
    """The config of ``method`` at the knob values :func:`tune_method` chose."""
    if method == "pact":
        return method_config("pact", tuned["keep_ratio"], tuned.get("cutoff"))
    if method == "fastv":
        return method_config("fastv", tuned["keep_ratio"])
    return method_config("tome", tuned["merge_ratio"])


def removal(model, batch: dict, config: PactConfig) -> float:
    """Fraction of visual tokens ``config`` removes from ``batch`` (one prefill of ``model``)."""
    with attached(model, config) as handle, torch.no_grad():
        model(**batch, logits_to_keep=1)
        return handle.stats.last_reduction_ratio


def tune(measure: Callable[[float], float], guess: float, bounds, target: float, steps: int,
         increasing: bool) -> tuple[float, float, list]:  # fmt: skip
    """The parameter whose removal is nearest ``target`` (removal monotone in it).

    Starts at ``guess``; then interpolates between the last two tries when that stays
    inside the bracket the tries have narrowed, and bisects the bracket otherwise.
    Returns ``(value, removal, tries)``, ``tries`` being ``[value, removal]`` pairs.
    """
    low, high = bounds
    value, tries = guess, []
    for _ in range(max(1, steps)):
        got = measure(value)
        tries.append([round(value, 5), round(got, 5)])
        if abs(got - target) <= 0.01:
            break
        if (got < target) == increasing:
            low = value
        else:
            high = value
        value = (low + high) / 2
        if len(tries) >= 2:
            (v0, r0), (v1, r1) = tries[-2], tries[-1]
            if r1 != r0:
                secant = v1 + (target - r1) * (v1 - v0) / (r1 - r0)
                value = secant if low < secant < high else value
    best = min(tries, key=lambda pair: abs(pair[1] - target))
    return best[0], best[1], tries


def tune_method(model, batch: dict, method: str, target: float, steps: int) -> dict:
    """The knob of ``method`` (pact, fastv or tome) that removes about ``target`` of the
    visual tokens of ``batch``: the knob values, the removal reached and the tries."""

    def measure(make: Callable[[float], PactConfig]) -> Callable[[float], float]:
        return lambda value: removal(model, batch, make(value))

    if method == "fastv":  # floor(keep * n) tokens stay: the ratio is exact
        keep = round(1.0 - target, 6)
        got = measure(lambda v: method_config("fastv", v))(keep)
        return {"keep_ratio": keep, "removal": got, "tries": [[keep, got]]}
    if method == "tome":  # r = floor(m * n) per stage: about (1 - m)^8 stays
        guess = round(1.0 - (1.0 - target) ** (1.0 / TOME_STAGES), 6)
        make = lambda v: method_config("tome", v)  # noqa: E731
        value, got, tries = tune(measure(make), guess, (0.0, 0.5), target, steps, True)
        return {"merge_ratio": value, "removal": got, "tries": tries}
    make = lambda v: method_config("pact", v)  # noqa: E731
    value, got, tries = tune(
        measure(make), round(1.0 - target, 6), (0.02, 1.0), target, steps, False
    )
    result = {"keep_ratio": value, "cutoff": 0.21, "removal": got, "tries": tries}
    if got > target + 0.02:
        # DBDPC alone merges past the target on these keys: keep EUTI's 0.55, lower the cutoff.
        make = lambda v: method_config("pact", 0.55, cutoff=v)  # noqa: E731
        cut, got, more = tune(measure(make), 0.105, (0.0, 0.21), target, steps, True)
        result = {"keep_ratio": 0.55, "cutoff": cut, "removal": got, "tries": tries + more}
    return result


def untuned(methods, target: float) -> dict[str, dict]:
    """Knob values of ``methods`` from the token arithmetic alone (used if tuning fails)."""
    keep = round(1.0 - target, 6)
    guesses = {
        "pact": {"keep_ratio": keep, "cutoff": 0.21},
        "fastv": {"keep_ratio": keep},
        "tome": {"merge_ratio": round(1.0 - keep ** (1.0 / TOME_STAGES), 6)},
    }
    return {method: guesses[method] | {"untuned": True} for method in methods}


def tune_knob(model, batch: dict, preset: str, target: float, steps: int):
    """``(knob, value, removal, tries)``: ``preset``'s :data:`STRENGTHS` knob, tuned with the
    guess and bounds of :data:`KNOB_TUNING` to remove about ``target`` of the visual tokens."""
    knob = STRENGTHS[preset][0]
    if knob == "keep_tokens":
        return (knob, *_tune_token_count(model, batch, preset, target, steps))
    guess, bounds, increasing = KNOB_TUNING[knob]

    def measure(value: float) -> float:
        return removal(model, batch, PactConfig.load(preset, [f"{knob}={value}"]))

    value, got, tries = tune(measure, guess(target), bounds, target, steps, increasing)
    return knob, value, got, tries


def _tune_token_count(model, batch: dict, preset: str, target: float, steps: int):
    """``(value, removal, tries)`` of a per-image token count (VisionZip's dominant tokens):
    whole numbers from 1 to the visual tokens of the batch's first row."""
    with attached(model, PactConfig.load(preset, ["keep_tokens=1"])) as handle, torch.no_grad():
        model(**batch, logits_to_keep=1)
        tokens = handle.stats.last[0].visual_in[0]

    def measure(value: float) -> float:
        config = PactConfig.load(preset, [f"keep_tokens={max(1, round(value))}"])
        return removal(model, batch, config)

    value, got, tries = tune(measure, (1.0 - target) * tokens, (1, tokens), target, steps, False)
    return max(1, round(value)), got, [[max(1, round(v)), r] for v, r in tries]
