"""The queue families at scrape time, from the poller's last readings: a scrape never waits for the
broker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.exposition.catalogue import Kind, MetricSpec
from celery_events_exporter.queues.poller import QueuePoller
from celery_events_exporter.queues.registry import QueueRegistry
from celery_events_exporter.queues.tracking import TaskTracking, TrackingSnapshot

OnlineWorkers = Callable[[float], set[str]]
"""now -> hostnames of the workers online then (from the state's liveness rule)."""


def _family(
    spec: MetricSpec, labels: tuple[str, ...] | None = None
) -> CounterMetricFamily | GaugeMetricFamily:
    labels = spec.labels if labels is None else labels
    if spec.kind is Kind.COUNTER:
        return CounterMetricFamily(spec.name, spec.help, labels=labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=labels)


class QueuesCollector(Collector):
    """The polled families (when a poller runs) and the tracked ones; the sweep that finds
    orphaned tasks (the state counts them) runs at each scrape, before they are read."""

    def __init__(
        self,
        poller: QueuePoller | None,
        registry: QueueRegistry,
        tracking: TaskTracking,
        online_workers: OnlineWorkers,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.poller = poller
        self.registry = registry
        self.tracking = tracking
        self.online_workers = online_workers
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # else the registry would collect() at registration

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        online = self.online_workers(now)
        self.tracking.sweep(now, online)
        tracked = self.tracking.snapshot()
        yield from self._tracked(tracked, now)
        if self.poller is not None:
            yield from self._polled(self.poller, online)

    def _tracked(self, tracked: TrackingSnapshot, now: float) -> Iterator[Metric]:
        oldest = _family(m.QUEUE_OLDEST_TASK_AGE)
        for queue, sent_at in sorted(tracked.oldest_sent.items()):
            oldest.add_metric([queue], max(0.0, now - sent_at))
        yield oldest
        prefetched = _family(m.WORKER_PREFETCHED_TASKS)
        for worker, count in sorted(tracked.prefetched.items()):
            prefetched.add_metric([worker], count)
        yield prefetched

    def _polled(self, poller: QueuePoller, online: set[str]) -> Iterator[Metric]:
        status = poller.status
        readings = status.readings
        length = _family(m.QUEUE_LENGTH)
        consumers = _family(m.QUEUE_CONSUMERS)
        unacked = _family(m.QUEUE_UNACKED)
        worker_consumers: dict[str, int] | None = None
        for queue, reading in sorted(readings.items()):
            length.add_metric([queue], reading.length)
            if reading.unacked is not None:
                unacked.add_metric([queue], reading.unacked)
            if reading.consumers is not None:
                consumers.add_metric([queue], reading.consumers)
                continue
            if worker_consumers is None:
                worker_consumers = self._worker_consumers(online)
            consumers.add_metric([queue], worker_consumers.get(queue, 0))
        yield length
        yield consumers
        yield unacked

        duration = _family(m.EXPORTER_QUEUE_POLL_DURATION)
        if status.duration is not None:
            duration.add_metric([], status.duration)
        yield duration
        errors = _family(m.EXPORTER_QUEUE_POLL_ERRORS)
        for reason, count in sorted(status.errors.items()):
            errors.add_metric([reason], count)
        yield errors
        age = _family(m.EXPORTER_QUEUE_READINGS_AGE)
        if status.read_at is not None:
            age.add_metric([], max(0.0, self.clock() - status.read_at))
        yield age
        watched = _family(m.EXPORTER_QUEUES_WATCHED)
        watched.add_metric([], len(self.registry))
        yield watched
        dropped = _family(m.EXPORTER_QUEUES_DROPPED)
        dropped.add_metric([], self.registry.dropped)
        yield dropped
        evicted = _family(m.EXPORTER_QUEUES_EVICTED)
        evicted.add_metric([], self.registry.evicted)
        yield evicted

    def _worker_consumers(self, online: set[str]) -> dict[str, int]:
        """{queue: online workers consuming it}, for brokers that do not count consumers."""
        counts: dict[str, int] = {}
        for worker, queues in self.registry.worker_queues().items():
            if worker in online:
                for queue in queues:
                    counts[queue] = counts.get(queue, 0) + 1
        return counts
