"""The recent-task store's self-metrics, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.exposition.families import family
from celery_events_exporter.tasks.store import RecentTasks


class RecentTasksCollector(Collector):
    """How many tasks the store holds (merging what arrived since the last read), how many it
    evicted, and the task events that left its window unmerged."""

    def __init__(self, store: RecentTasks) -> None:
        self.store = store

    def describe(self) -> Iterable[Metric]:
        return []  # else the registry would collect() at registration

    def collect(self) -> Iterator[Metric]:
        store = self.store
        yield family(m.EXPORTER_RECENT_TASKS, {(): store.count()})
        yield family(m.EXPORTER_RECENT_TASKS_EVICTED, {(): store.evicted})
        yield family(m.EXPORTER_RECENT_TASK_EVENTS_DROPPED, {(): store.dropped})
