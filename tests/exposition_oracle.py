"""The oracle for ``/metrics``: the event families built as prometheus-client families from the
same snapshot the exporter writes, so prometheus-client's own writers (``generate_latest`` and
its OpenMetrics twin) say what the exporter's bytes must be.

Built the plain way on purpose: one family object per spec, one ``add_metric`` per series, the
histogram's cumulative buckets summed here, bucket bounds formatted as prometheus-client's own
``Histogram`` formats them (``floatToGoString``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar, cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.exposition.catalogue import Kind, MetricSpec
from celery_events_exporter.exposition.collector import EventsCollector
from celery_events_exporter.exposition.writer import Format
from celery_events_exporter.state import Snapshot, TaskKey

V = TypeVar("V")
K = TypeVar("K", bound=tuple[str, ...])
Reference = Callable[[Collector], bytes]
REFERENCES: dict[Format, Reference] = {
    Format.TEXT: generate_latest,
    Format.OPENMETRICS: openmetrics.generate_latest,
}
"""prometheus-client's writer for each format (the OpenMetrics one ends the page with # EOF)."""


_go_float = cast(Callable[[float], str], floatToGoString)


def reference(collector: Collector, fmt: Format) -> bytes:
    return REFERENCES[fmt](collector)


def counter_family(spec: MetricSpec, labels: tuple[str, ...], series: Mapping[K, float]) -> Metric:
    """A counter or gauge family of ``series`` (label values in ``labels``' order)."""
    family_type = CounterMetricFamily if spec.kind is Kind.COUNTER else GaugeMetricFamily
    family = family_type(spec.name, spec.help, labels=labels)
    for values, value in series.items():
        family.add_metric(list(values), value)
    return family


def histogram_family(
    spec: MetricSpec,
    labels: tuple[str, ...],
    histograms: Mapping[K, tuple[int, ...]],
    sums: Mapping[K, float],
    bounds: tuple[float, ...],
) -> Metric:
    """A histogram family from per-bucket (not cumulative) counts, +Inf last, and sums."""
    family = HistogramMetricFamily(spec.name, spec.help, labels=labels)
    bound_texts = [*map(_go_float, bounds), "+Inf"]
    for values, counts in histograms.items():
        buckets, running = [], 0
        for bound, count in zip(bound_texts, counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        family.add_metric(list(values), buckets, sums[values])
    return family


def families(
    collector: EventsCollector,
    snap: Snapshot,
    per_worker: Mapping[str, Mapping[str, int]],
    now: float,
) -> list[Metric]:
    """The families ``collector.write(snap, per_worker, now, fmt)`` writes, in the same order."""
    settings = collector.state.settings
    with_worker = settings.worker_label
    task_labels = m.TASK_RUNTIME.labels if with_worker else (m.TASK,)

    def by_task(series: Mapping[TaskKey, V]) -> dict[tuple[str, ...], V]:
        return {(key if with_worker else key[:1]): value for key, value in series.items()}

    out: list[Metric] = [
        counter_family(spec, task_labels, by_task(snap.task_counts[event_type]))
        for event_type, spec in m.TASK_STATE_COUNTERS.items()
    ]
    out.append(counter_family(m.TASK_SENT, m.TASK_SENT.labels, snap.sent))
    out.append(counter_family(m.TASK_EXCEPTIONS, m.TASK_EXCEPTIONS.labels, snap.exceptions))
    out.append(counter_family(m.TASK_ORPHANED, task_labels, by_task(snap.orphaned)))
    for spec, histograms, sums, bounds in (
        (m.TASK_RUNTIME, snap.runtime, snap.runtime_sums, settings.runtime_buckets),
        (m.TASK_QUEUE_WAIT, snap.queue_wait, snap.queue_wait_sums, settings.queue_wait_buckets),
    ):
        out.append(histogram_family(spec, task_labels, by_task(histograms), by_task(sums), bounds))
    out.extend(
        counter_family(spec, spec.labels, series)
        for spec, series in collector.small_families(snap, per_worker, now)
    )
    return out


class Families(Collector):
    """Fixed families as a prometheus-client collector."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


class Oracle(Collector):
    """``collector``'s families as prometheus-client collects them, from a fresh snapshot taken
    at ``collector.clock()`` (as ``collector.render`` takes its own)."""

    def __init__(self, collector: EventsCollector) -> None:
        self.collector = collector

    def collect(self) -> Iterator[Metric]:
        now = self.collector.clock()
        return iter(families(self.collector, *self.collector.snapshot(now), now))


def page_registry(collector: EventsCollector, others: Iterable[Collector]) -> CollectorRegistry:
    """A registry holding what ``MetricsPage(collector, others)`` serves, in the same order."""
    registry = CollectorRegistry(auto_describe=False)
    for source in (Oracle(collector), *others):
        registry.register(source)
    return registry
