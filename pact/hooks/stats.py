"""Reduction statistics of a hooked model: the last reducing call, and running totals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pact.flops import DecoderShape
from pact.tensors import ReductionStats, StepTimes


def decoder_shape(decoder: Any) -> DecoderShape | None:
    """The FLOPs-relevant sizes of a hooked decoder, from its config (None if it lacks one)."""
    try:
        return DecoderShape.from_config(decoder.config)
    except (AttributeError, TypeError):
        return None


def prefill_flops(decoder: DecoderShape, stages: list[ReductionStats]) -> tuple[int, int]:
    """``(reduced, unreduced)`` decoder FLOPs of one call, summed over its rows
    (:mod:`pact.flops`), from the stats of the stages that reduced it."""
    reduced = unreduced = 0
    for row, tokens in enumerate(stages[0].tokens_in):
        kept = [(stage.layer, stage.tokens_out[row]) for stage in stages]
        reduced += decoder.prefill_flops(tokens, kept)
        unreduced += decoder.prefill_flops(tokens)
    return reduced, unreduced


@dataclass
class HandleStats:
    """Fixed-size counters: nothing grows with the number of calls."""

    last: list[ReductionStats] = field(default_factory=list)
    """Per stage, the stats of the most recent forward that reduced visual tokens."""
    calls: int = 0
    """Forwards that reduced visual tokens (prefills; decoding steps have none)."""
    visual_in: int = 0
    """Visual tokens that entered the first stage, over all calls."""
    visual_out: int = 0
    """Visual tokens that left the last stage, over all calls."""
    seconds: StepTimes = field(default_factory=StepTimes)
    """Seconds in score / cluster / merge, over all calls and stages."""
    decoder: DecoderShape | None = None
    """Sizes of the hooked decoder, for FLOPs (None: unknown, FLOPs are not counted)."""
    prefill_flops: int = 0
    """Analytic decoder FLOPs of the reducing calls, as reduced (:mod:`pact.flops`)."""
    prefill_flops_unreduced: int = 0
    """The same calls' FLOPs without reduction."""
    last_flops: tuple[int, int] | None = None
    """``(reduced, unreduced)`` FLOPs of the last reducing call."""

    def record(self, stages: list[ReductionStats]) -> None:
        self.last = stages
        self.calls += 1
        self.visual_in += sum(stages[0].visual_in)
        self.visual_out += sum(stages[-1].after_merge)
        if self.decoder is not None and all(stage.layer is not None for stage in stages):
            self.last_flops = prefill_flops(self.decoder, stages)
            self.prefill_flops += self.last_flops[0]
            self.prefill_flops_unreduced += self.last_flops[1]
        for stage in stages:
            self.seconds.score += stage.seconds.score
            self.seconds.cluster += stage.seconds.cluster
            self.seconds.merge += stage.seconds.merge

    @property
    def reduction_ratio(self) -> float:
        """Fraction of visual tokens removed over all calls."""
        return 1.0 - self.visual_out / self.visual_in if self.visual_in else 0.0

    @property
    def last_reduction_ratio(self) -> float:
        """Fraction of visual tokens removed by the last reducing call."""
        if not self.last or not sum(self.last[0].visual_in):
            return 0.0
        return 1.0 - sum(self.last[-1].after_merge) / sum(self.last[0].visual_in)

    def reset(self) -> None:
        self.__init__(decoder=self.decoder)

    def summary(self) -> dict:
        """Plain numbers, for printing or JSON."""
        last = self.last
        return {
            "last_call": {
                "visual_in": list(last[0].visual_in) if last else [],
                "visual_out": list(last[-1].after_merge) if last else [],
                "reduction_ratio": round(self.last_reduction_ratio, 4),
                "prefill_flops": self.last_flops[0] if self.last_flops else None,
                "prefill_flops_unreduced": self.last_flops[1] if self.last_flops else None,
                "seconds": {
                    "score": sum(s.seconds.score for s in last),
                    "cluster": sum(s.seconds.cluster for s in last),
                    "merge": sum(s.seconds.merge for s in last),
                },
            },
            "total": {
                "calls": self.calls,
                "visual_in": self.visual_in,
                "visual_out": self.visual_out,
                "reduction_ratio": round(self.reduction_ratio, 4),
                "prefill_flops": self.prefill_flops,
                "prefill_flops_unreduced": self.prefill_flops_unreduced,
                "seconds": {
                    "score": self.seconds.score,
                    "cluster": self.seconds.cluster,
                    "merge": self.seconds.merge,
                },
            },
        }
