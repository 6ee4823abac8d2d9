"""What Prometheus 2.x's ``increase()`` makes of stored samples, for tests that must tell the
count a window holds from what ``increase()`` extrapolates of it.

``increase(v[W])`` is not the rise between the window's first and last samples: it extrapolates
that rise towards both edges of the window, by the distance to an edge when it is under 1.1
average sample intervals (else by half an interval), and towards the start no further than the
point where the counter would have been 0 (promql/functions.go, ``extrapolatedRate``; a window
is ``[at - W, at]``, both ends included, in 2.x). With few samples in a short window (scrapes
that failed: a test's Prometheus scrapes every 250 ms with a 250 ms timeout, and a loaded
machine misses many) a counter that rose from 1 to 3 reads up to 3 from the start's side alone,
and more from the end's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Point = tuple[int, float]
"""(milliseconds, value), as Prometheus stores a sample."""

FOLDED = frozenset({"instance", "pod"})
"""The labels the dashboards and rules fold the replicas of an HA pair over
(``max without (instance, pod)``)."""


@dataclass(frozen=True)
class Series:
    labels: Mapping[str, str]
    points: list[Point]

    def rise(self) -> float:
        """The counter's rise over the points, resets added: the count the window holds."""
        total, last = 0.0, None
        for _, value in self.points:
            if last is not None:
                total += value - last if value >= last else value
            last = value
        return total

    def resets(self) -> int:
        return sum(1 for (_, a), (_, b) in zip(self.points, self.points[1:], strict=False) if b < a)


def increase(points: list[Point], start_ms: int, end_ms: int) -> float | None:
    """Prometheus 2.x's ``increase()`` of one series whose samples in ``[start_ms, end_ms]``
    are ``points``; None (no result) under two samples."""
    if len(points) < 2:
        return None
    first_t, first_v = points[0]
    last_t, last_v = points[-1]
    result = last_v - first_v
    previous = 0.0
    for _, value in points:
        if value < previous:
            result += previous
        previous = value
    to_start = (first_t - start_ms) / 1000
    to_end = (end_ms - last_t) / 1000
    sampled = (last_t - first_t) / 1000
    average = sampled / (len(points) - 1)
    if result > 0 and first_v >= 0:
        to_start = min(to_start, sampled * (first_v / result))
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    return result * (interval / sampled)


def parse(result: Iterable[Mapping[str, object]]) -> list[Series]:
    """The series of a range-vector query's result (Prometheus' HTTP API)."""
    found = []
    for item in result:
        labels = item["metric"]
        values = item["values"]
        assert isinstance(labels, dict) and isinstance(values, list)
        points = [(round(float(when) * 1000), float(value)) for when, value in values]
        found.append(Series(labels, points))
    return found


def folded_increase(
    series: Iterable[Series], start_ms: int, end_ms: int, by: str | None
) -> dict[str, float]:
    """``sum by (by) (max without (instance, pod) (increase(...)))`` of ``series`` (``sum(...)``
    when ``by`` is None, keyed ""), as Prometheus evaluates it."""
    replicas: dict[tuple[tuple[str, str], ...], float] = {}
    for one in series:
        value = increase(one.points, start_ms, end_ms)
        if value is None:
            continue
        key = tuple(sorted((k, v) for k, v in one.labels.items() if k not in FOLDED))
        replicas[key] = max(replicas.get(key, value), value)
    sums: dict[str, float] = {}
    for key, value in replicas.items():
        group = dict(key).get(by, "") if by else ""
        sums[group] = sums.get(group, 0.0) + value
    return sums
