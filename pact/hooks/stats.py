"""Reduction statistics of a hooked model: the last reducing call, and running totals."""

from __future__ import annotations

from dataclasses import dataclass, field

from pact.tensors import ReductionStats, StepTimes


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

    def record(self, stages: list[ReductionStats]) -> None:
        self.last = stages
        self.calls += 1
        self.visual_in += sum(stages[0].visual_in)
        self.visual_out += sum(stages[-1].after_merge)
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
        self.__init__()

    def summary(self) -> dict:
        """Plain numbers, for printing or JSON."""
        last = self.last
        return {
            "last_call": {
                "visual_in": list(last[0].visual_in) if last else [],
                "visual_out": list(last[-1].after_merge) if last else [],
                "reduction_ratio": round(self.last_reduction_ratio, 4),
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
                "seconds": {
                    "score": self.seconds.score,
                    "cluster": self.seconds.cluster,
                    "merge": self.seconds.merge,
                },
            },
        }
