"""Render the state as Prometheus metric families, named and described by the catalogue."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator

import celery
import kombu
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from exporter import __version__, exposition
from exporter import metrics as m
from exporter.exposition import FastText, LabelCache
from exporter.ingest import Ingestor
from exporter.intake.broker import BrokerStatus
from exporter.metrics import WORKER, Kind, MetricSpec
from exporter.state import Histogram, Snapshot, State, TaskKey, WorkerView
from exporter.tasks_store import RecentTasks

Family = CounterMetricFamily | GaugeMetricFamily


def _family(spec: MetricSpec, labels: tuple[str, ...] | None = None) -> Family:
    """A counter or gauge family for ``spec``; histograms are built by ``_histogram``."""
    labels = spec.labels if labels is None else labels
    if spec.kind is Kind.COUNTER:
        return CounterMetricFamily(spec.name, spec.help, labels=labels)
    if spec.kind is Kind.GAUGE:
        return GaugeMetricFamily(spec.name, spec.help, labels=labels)
    raise TypeError(f"{spec.name} is a {spec.kind.value}")


class EventsCollector(Collector, FastText):
    def __init__(
        self,
        state: State,
        broker: BrokerStatus,
        ingestor: Ingestor,
        clock: Callable[[], float] = time.time,
        recent_tasks: RecentTasks | None = None,
    ) -> None:
        self.state = state
        self.broker = broker
        self.ingestor = ingestor
        self.clock = clock
        self.recent_tasks = recent_tasks
        self._dropped = frozenset() if state.settings.worker_label else frozenset({WORKER})
        self._labels = LabelCache()

    def _collect_small(self, snap: Snapshot, now: float) -> Iterator[Metric]:
        yield from self._workers(snap.workers)
        yield from self._self_metrics(snap.events_by_type, snap.rejected, snap.tracked_tasks, now)

    def render_text(self) -> str:
        """The same families as ``collect``, in the same order, as Prometheus text: the task
        families written directly (``exporter.exposition``), the small ones by
        prometheus-client."""
        now = self.clock()
        with self.state.lock:
            self.state.purge_offline_workers(now)
            snap = self.state.snapshot(now)
        settings = self.state.settings
        names = m.TASK_RUNTIME.labels_without(self._dropped)
        with_worker = settings.worker_label

        def task_values(key: tuple[str, ...]) -> tuple[str, ...]:
            return key if with_worker else key[:1]

        def as_is(key: tuple[str, ...]) -> tuple[str, ...]:
            return key

        out: list[str] = []
        cache = self._labels
        for event_type, spec in m.TASK_STATE_COUNTERS.items():
            exposition.counter(out, cache, spec, names, snap.task_counts[event_type], task_values)
        exposition.counter(out, cache, m.TASK_SENT, m.TASK_SENT.labels, snap.sent, as_is)
        exposition.counter(
            out, cache, m.TASK_EXCEPTIONS, m.TASK_EXCEPTIONS.labels, snap.exceptions, as_is
        )
        for spec, histograms, bounds in (
            (m.TASK_RUNTIME, snap.runtime, settings.runtime_buckets),
            (m.TASK_QUEUE_WAIT, snap.queue_wait, settings.queue_wait_buckets),
        ):
            exposition.histogram(out, cache, spec, names, histograms, bounds, task_values)
        cache.rotate()
        small = _Families(list(self._collect_small(snap, now)))
        out.append(generate_latest(small).decode())
        return "".join(out)

    def describe(self) -> Iterable[Metric]:
        # Without describe() the registry would call collect() at registration time.
        return []

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        with self.state.lock:
            self.state.purge_offline_workers(now)
            snap = self.state.snapshot(now)
        task_labels = m.TASK_RUNTIME.labels_without(self._dropped)

        def task_values(key: TaskKey) -> list[str]:
            return [key[0], key[1]] if self.state.settings.worker_label else [key[0]]

        for event_type, spec in m.TASK_STATE_COUNTERS.items():
            family = _family(spec, task_labels)
            for key, count in snap.task_counts[event_type].items():
                family.add_metric(task_values(key), count)
            yield family

        sent = _family(m.TASK_SENT)
        for (task, queue), count in snap.sent.items():
            sent.add_metric([task, queue], count)
        yield sent

        exceptions = _family(m.TASK_EXCEPTIONS)
        for (task, cls), count in snap.exceptions.items():
            exceptions.add_metric([task, cls], count)
        yield exceptions

        for spec, histograms, bounds in (
            (m.TASK_RUNTIME, snap.runtime, self.state.settings.runtime_buckets),
            (m.TASK_QUEUE_WAIT, snap.queue_wait, self.state.settings.queue_wait_buckets),
        ):
            yield self._histogram(spec, task_labels, histograms, bounds, task_values)

        yield from self._collect_small(snap, now)

    @staticmethod
    def _histogram(
        spec: MetricSpec,
        labels: tuple[str, ...],
        histograms: dict[TaskKey, Histogram],
        bounds: tuple[float, ...],
        values: Callable[[TaskKey], list[str]],
    ) -> Metric:
        family = HistogramMetricFamily(spec.name, spec.help, labels=labels)
        for key, histogram in histograms.items():
            family.add_metric(values(key), histogram.cumulative(bounds), histogram.total)
        return family

    @staticmethod
    def _workers(workers: Iterable[WorkerView]) -> Iterator[Metric]:
        families = {spec: _family(spec) for spec in (*m.WORKER_GAUGES, m.WORKER_PROCESSED)}
        info = _family(m.WORKER_INFO)
        for view in workers:
            worker = view.state
            host = [worker.hostname]
            families[m.WORKER_ONLINE].add_metric(host, 1.0 if view.online else 0.0)
            families[m.WORKER_LAST_HEARTBEAT].add_metric(host, worker.last_heartbeat)
            if worker.freq:
                families[m.WORKER_HEARTBEAT_INTERVAL].add_metric(host, worker.freq)
            if worker.active is not None:
                families[m.WORKER_ACTIVE_TASKS].add_metric(host, worker.active)
            if worker.concurrency is not None:
                families[m.WORKER_CONCURRENCY].add_metric(host, worker.concurrency)
            if worker.processed is not None:
                families[m.WORKER_PROCESSED].add_metric(host, worker.processed)
            if worker.loadavg is not None:
                loads = (m.WORKER_LOAD1, m.WORKER_LOAD5, m.WORKER_LOAD15)
                for spec, value in zip(loads, worker.loadavg, strict=True):
                    families[spec].add_metric(host, value)
            if any(worker.software):
                info.add_metric([worker.hostname, *worker.software], 1.0)
        yield from families.values()
        yield info

    def _self_metrics(
        self, events: dict[str, int], rejected: dict[str, int], tracked: int, now: float
    ) -> Iterator[Metric]:
        connected = _family(m.EXPORTER_BROKER_CONNECTED)
        connected.add_metric([], 1.0 if self.broker.connected else 0.0)
        yield connected
        errors = _family(m.EXPORTER_BROKER_CONNECTION_ERRORS)
        errors.add_metric([], self.broker.connection_errors)
        yield errors
        by_type = _family(m.EXPORTER_EVENTS)
        for event_type, count in sorted(events.items()):
            by_type.add_metric([event_type], count)
        yield by_type
        rejections = _family(m.EXPORTER_EVENTS_REJECTED)
        for reason, count in sorted(rejected.items()):
            rejections.add_metric([reason], count)
        yield rejections
        backlog = _family(m.EXPORTER_INTAKE_BACKLOG)
        backlog.add_metric([], self.ingestor.backlog)
        yield backlog
        lag = _family(m.EXPORTER_INTAKE_LAG)
        lag.add_metric([], self.ingestor.lag(now))
        yield lag
        tracked_family = _family(m.EXPORTER_TRACKED_TASKS)
        tracked_family.add_metric([], tracked)
        yield tracked_family
        if self.recent_tasks is not None:
            stored = _family(m.EXPORTER_RECENT_TASKS)
            stored.add_metric([], len(self.recent_tasks))
            yield stored
            evicted = _family(m.EXPORTER_RECENT_TASKS_EVICTED)
            evicted.add_metric([], self.recent_tasks.evicted)
            yield evicted
        build = _family(m.EXPORTER_BUILD_INFO)
        build.add_metric(
            [__version__, celery.__version__, kombu.__version__, platform.python_version()], 1.0
        )
        yield build


class _Families(Collector):
    """Already-built families, for ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families
