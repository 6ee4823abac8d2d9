"""The event families (task, worker and self-monitoring), named and described by the catalogue,
written from a snapshot of the state by ``celery_events_exporter.exposition.writer``."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import celery
import kombu

from celery_events_exporter import __version__
from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.exposition import writer as exposition
from celery_events_exporter.exposition.catalogue import WORKER, MetricSpec
from celery_events_exporter.exposition.writer import LabelKey, SeriesCache
from celery_events_exporter.state import Snapshot, State, TaskKey, WorkerView

Values = Callable[[TaskKey], LabelKey]
SmallFamilies = list[tuple[MetricSpec, dict[LabelKey, float]]]
PerWorker = dict[str, dict[str, int]]
"""hostname -> {task event type: count}."""
K = TypeVar("K")


class EventsCollector:
    """Writes the state's families for ``/metrics``
    (``celery_events_exporter.exposition.page.MetricsPage``), keeping each family's written
    series between scrapes (``writer.SeriesCache``). The other stages' self-metrics are their
    own collectors' (the decoder's, the broker status', the recent-task store's, the queues',
    the web server's)."""

    def __init__(self, state: State, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self._dropped = frozenset() if state.settings.worker_label else frozenset({WORKER})
        self._task_series: dict[str, SeriesCache[TaskKey]] = {}
        self._small_series: dict[str, SeriesCache[LabelKey]] = {}

    def snapshot(self, now: float) -> tuple[Snapshot, PerWorker]:
        """The state as of ``now``, offline workers past their purge time dropped first, and
        each worker's task event counts."""
        snap = self.state.snapshot(now)
        return snap, self._per_worker(snap, snap.unlabelled)

    def render(self, fmt: exposition.Format) -> list[bytes]:
        """The event families as of now, in pieces, without the closing ``# EOF``."""
        now = self.clock()
        return self.write(*self.snapshot(now), now, fmt)

    def write(
        self,
        snap: Snapshot,
        per_worker: Mapping[str, Mapping[str, int]],
        now: float,
        fmt: exposition.Format,
    ) -> list[bytes]:
        """The event families of ``snap``: task counters, task histograms, then the worker and
        self-monitoring families."""
        out: list[bytes] = []
        self._render_tasks(out, snap, fmt)
        for spec, series in self.small_families(snap, per_worker, now):
            out.append(exposition.header(spec, fmt))
            cache = _cache(self._small_series, spec)
            exposition.counter(out, cache, spec, spec.labels, series, _as_is)
        return out

    def _render_tasks(self, out: list[bytes], snap: Snapshot, fmt: exposition.Format) -> None:
        settings = self.state.settings
        names = m.TASK_RUNTIME.labels_without(self._dropped)
        with_worker = settings.worker_label

        def task_values(key: TaskKey) -> LabelKey:
            return key if with_worker else key[:1]

        counters: list[tuple[MetricSpec, LabelKey, Mapping[TaskKey, float], Values]] = [
            *(
                (spec, names, snap.task_counts[event_type], task_values)
                for event_type, spec in m.TASK_STATE_COUNTERS.items()
            ),
            (m.TASK_SENT, m.TASK_SENT.labels, snap.sent, _as_is),
            (m.TASK_EXCEPTIONS, m.TASK_EXCEPTIONS.labels, snap.exceptions, _as_is),
            (m.TASK_ORPHANED, names, snap.orphaned, task_values),
        ]
        for spec, labels, series, values in counters:
            out.append(exposition.header(spec, fmt))
            exposition.counter(out, _cache(self._task_series, spec), spec, labels, series, values)
        for spec, histograms, sums, bounds in (
            (m.TASK_RUNTIME, snap.runtime, snap.runtime_sums, settings.runtime_buckets),
            (m.TASK_QUEUE_WAIT, snap.queue_wait, snap.queue_wait_sums, settings.queue_wait_buckets),
        ):
            out.append(exposition.header(spec, fmt))
            cache = _cache(self._task_series, spec)
            exposition.histogram(out, cache, spec, names, (histograms, sums), bounds, task_values)

    def small_families(
        self, snap: Snapshot, per_worker: Mapping[str, Mapping[str, int]], now: float
    ) -> SmallFamilies:
        """The worker and self-monitoring families: a few series each, per worker at most."""
        return [
            *self._workers(snap.workers, per_worker),
            *self._self_metrics(snap.events_by_type, snap.rejected, snap.tracked_tasks),
            (m.EXPORTER_LABEL_OVERFLOW, {key: n for key, n in sorted(snap.label_overflow.items())}),
        ]

    @staticmethod
    def _per_worker(snap: Snapshot, unlabelled: dict[str, dict[str, int]] | None) -> PerWorker:
        """hostname -> {task event type: count}. With the worker label the task series hold
        them: summed here from the snapshot's copy, outside the lock."""
        if unlabelled is not None:
            return unlabelled
        found: dict[str, dict[str, int]] = {}
        for event_type, series in snap.task_counts.items():
            for (_, hostname), count in series.items():
                host = found.get(hostname)
                if host is None:
                    host = found[hostname] = {}
                host[event_type] = host.get(event_type, 0) + count
        return found

    @staticmethod
    def _workers(
        workers: Sequence[WorkerView], per_worker: Mapping[str, Mapping[str, int]]
    ) -> SmallFamilies:
        specs = (
            *m.WORKER_GAUGES,
            m.WORKER_PROCESSED,
            m.WORKER_TASKS,
            m.WORKER_INFO,
            m.WORKER_UNCOUNTED_TASKS,
            m.WORKER_SHUTDOWN_CLEAN,
        )
        families: dict[MetricSpec, dict[LabelKey, float]] = {spec: {} for spec in specs}
        for view in workers:
            worker = view.state
            host = (worker.hostname,)
            families[m.WORKER_ONLINE][host] = 1.0 if view.online else 0.0
            families[m.WORKER_LAST_HEARTBEAT][host] = worker.last_heartbeat
            if worker.freq:
                families[m.WORKER_HEARTBEAT_INTERVAL][host] = worker.freq
            if worker.active is not None:
                families[m.WORKER_ACTIVE_TASKS][host] = worker.active
            if worker.concurrency is not None:
                families[m.WORKER_CONCURRENCY][host] = worker.concurrency
            families[m.WORKER_SHUTDOWN_CLEAN][host] = 1.0 if worker.said_goodbye else 0.0
            if worker.processed is not None:
                families[m.WORKER_PROCESSED][host] = worker.processed
                if worker.processed_base is not None:
                    started = per_worker.get(worker.hostname, {}).get("task-started", 0)
                    accepted = worker.processed - worker.processed_base
                    # A started event may trail the heartbeat that counted it: never below 0.
                    uncounted = accepted - (started - worker.started_base)
                    families[m.WORKER_UNCOUNTED_TASKS][host] = max(0, uncounted)
            if worker.loadavg is not None:
                loads = (m.WORKER_LOAD1, m.WORKER_LOAD5, m.WORKER_LOAD15)
                for spec, value in zip(loads, worker.loadavg, strict=True):
                    families[spec][host] = value
            if any(worker.software):
                families[m.WORKER_INFO][(worker.hostname, *worker.software)] = 1.0
        # Every state of every worker, from 0: a worker's first failure must be an increase
        # of an existing series, or rate() and increase() cannot see it.
        hosts = dict.fromkeys([view.state.hostname for view in workers])
        hosts.update(dict.fromkeys(per_worker))
        tasks = families[m.WORKER_TASKS]
        for hostname in hosts:
            counts = per_worker.get(hostname, {})
            for event_type, state in m.TASK_STATE_WORDS.items():
                tasks[(hostname, state)] = counts.get(event_type, 0)
        return list(families.items())

    @staticmethod
    def _self_metrics(
        events: dict[str, int], rejected: dict[str, int], tracked: int
    ) -> SmallFamilies:
        versions = (__version__, celery.__version__, kombu.__version__, platform.python_version())
        return [
            (m.EXPORTER_EVENTS, {(t,): count for t, count in sorted(events.items())}),
            (m.EXPORTER_EVENTS_REJECTED, {(r,): count for r, count in sorted(rejected.items())}),
            (m.EXPORTER_TRACKED_TASKS, {(): tracked}),
            (m.EXPORTER_BUILD_INFO, {versions: 1.0}),
        ]


def _cache(caches: dict[str, SeriesCache[K]], spec: MetricSpec) -> SeriesCache[K]:
    cache = caches.get(spec.name)
    if cache is None:
        cache = caches[spec.name] = SeriesCache()
    return cache


def _as_is(key: LabelKey) -> LabelKey:
    return key
