"""The queue families at scrape time, from the poller's last readings: a scrape never waits for the
broker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.exposition.catalogue import Kind, MetricSpec
from celery_events_exporter.queues.poller import QueuePoller
from celery_events_exporter.queues.reading import QueueReading
from celery_events_exporter.queues.registry import QueueRegistry
from celery_events_exporter.state.snapshot import QueueViews


class TaskLedger(Protocol):
    """What the queue families read of the state's task ledger (``State``)."""

    def queue_views(self, queues: Iterable[str] | None = None) -> QueueViews: ...

    def waiting_queues(self) -> list[str]: ...

    def online_workers(self, now: float) -> set[str]: ...

    def queues_read(self, readings: Mapping[str, QueueReading], started_at: float) -> None: ...


def _family(
    spec: MetricSpec, labels: tuple[str, ...] | None = None
) -> CounterMetricFamily | GaugeMetricFamily:
    labels = spec.labels if labels is None else labels
    if spec.kind is Kind.COUNTER:
        return CounterMetricFamily(spec.name, spec.help, labels=labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=labels)


class QueuesCollector(Collector):
    """The polled families (when a poller runs) and the task ledger's (the oldest waiting task
    per watched queue, prefetched tasks per worker), read from the state: a scrape changes
    nothing there."""

    def __init__(
        self,
        poller: QueuePoller | None,
        registry: QueueRegistry,
        ledger: TaskLedger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.poller = poller
        self.registry = registry
        self.ledger = ledger
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # else the registry would collect() at registration

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        # The queues tasks were sent to are watched (within the registry's bound) as soon as
        # their age is shown, polled or not.
        self.registry.add(self.ledger.waiting_queues())
        views = self.ledger.queue_views(self.registry.names())
        yield from self._tracked(views, now)
        if self.poller is not None:
            yield from self._polled(self.poller, self.ledger.online_workers(now))

    def _tracked(self, views: QueueViews, now: float) -> Iterator[Metric]:
        oldest = _family(m.QUEUE_OLDEST_TASK_AGE)
        for queue, sent_at in sorted(views.oldest_waiting.items()):
            oldest.add_metric([queue], max(0.0, now - sent_at))
        yield oldest
        prefetched = _family(m.WORKER_PREFETCHED_TASKS)
        for worker, count in sorted(views.prefetched.items()):
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
