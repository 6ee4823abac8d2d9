"""Histograms as the state keeps them: per-bucket counts, turned cumulative only when rendered."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Histogram:
    """Per-bucket (not cumulative) counts, the +Inf bucket last, and the sum of observations.

    Observations are counted by the counting loop itself
    (``celery_events_exporter.state.counting``).
    """

    counts: list[int]
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls([0] * (len(bounds) + 1))

    def cumulative(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        running = 0
        out: list[tuple[str, float]] = []
        labels = (*map(_format_bound, bounds), "+Inf")
        for bound, count in zip(labels, self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


def _format_bound(bound: float) -> str:
    return repr(float(bound))
