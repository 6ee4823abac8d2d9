"""The recent-task store's self-metrics, read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.exposition.families import family
from celery_events_exporter.tasks.store import RecentTasks


class RecentTasksCollector(Collector):
    """How many tasks the store holds (merging what arrived since the last read), how many it
    evicted, and the task events that left its window unmerged.

    While ``ingest_behind()`` says counting is catching up a backlog, the scrape reports the
    store's size as of its last merge instead: a merge then takes up to a window of task events
    (0.15 s and more of the interpreter), which a scrape in a burst would wait for and take from
    counting (bench/README.md, "The recent-task store's merge in a burst")."""

    def __init__(self, store: RecentTasks, ingest_behind: Callable[[], bool] | None = None) -> None:
        self.store = store
        self.ingest_behind = ingest_behind

    def describe(self) -> Iterable[Metric]:
        return []  # else the registry would collect() at registration

    def collect(self) -> Iterator[Metric]:
        store = self.store
        behind = self.ingest_behind
        size = len(store) if behind is not None and behind() else store.count()
        yield family(m.EXPORTER_RECENT_TASKS, {(): size})
        yield family(m.EXPORTER_RECENT_TASKS_EVICTED, {(): store.evicted})
        yield family(m.EXPORTER_RECENT_TASK_EVENTS_DROPPED, {(): store.dropped})
