"""Counting events: the tables the event stream fills, and the loop that fills them.

``Counts`` is not thread-safe: ``State`` holds its lock around every call. ``count`` runs for
every event the exporter receives, so the task-state path is written out in its loop (no call
and no attribute chain per event, the common cases first); what is rare or not about a task
state (worker events, task-sent, exceptions, new event types) is a method or function of its
own. ``exporter.state.reference`` says the same thing plainly, and a property test holds the two
to the same results.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

from exporter.events.exceptions import exception_class
from exporter.events.validate import INVALID_FIELD, Rejected, is_number, validate
from exporter.events.vocabulary import (
    KNOWN_EVENT_TYPES,
    MAX_CUSTOM_EVENT_TYPES,
    TASK_FAILED,
    TASK_RECEIVED,
    TASK_REJECTED,
    TASK_REVOKED,
    TASK_SENT,
    TASK_STARTED,
    TASK_STATE_EVENTS,
    TASK_SUCCEEDED,
    WORKER_EVENTS,
)
from exporter.state.histogram import Histogram
from exporter.state.settings import StateSettings
from exporter.state.snapshot import TaskKey
from exporter.state.workers import WorkerState, apply_worker_event

UNKNOWN_TASK = "unknown"
"""The task label for events whose task name the exporter never saw (it started after the task
was received, or the task is not registered on the worker)."""

OTHER = "other"
"""The label that stands for every value past a cardinality cap."""

RejectHook = Callable[[str, str], None]
"""(reason, detail) -> None: told of every rejected event (the exporter logs them)."""

_INF = math.inf
_WORKER_EVENTS = frozenset(WORKER_EVENTS)


class Counts:
    """Everything counted from the events: task counts and histograms per (task, worker), the
    tasks in flight, the workers, events by type, and the rejections."""

    def __init__(self, settings: StateSettings, on_reject: RejectHook | None = None) -> None:
        self.settings = settings
        self.on_reject = on_reject
        self.task_counts: dict[str, dict[TaskKey, int]] = {
            event_type: {} for event_type in TASK_STATE_EVENTS
        }
        self.sent: dict[tuple[str, str], int] = {}
        """(task name, queue) -> task-sent count."""
        self.exceptions: dict[tuple[str, str], int] = {}
        """(task name, exception class) -> failures."""
        self.runtime: dict[TaskKey, Histogram] = {}
        self.queue_wait: dict[TaskKey, Histogram] = {}
        self.workers: dict[str, WorkerState] = {}
        self.events_by_type: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.tracked: dict[str, tuple[str, float | None]] = {}
        """uuid -> (task name, worker's received timestamp) of tasks received and not finished,
        insertion-ordered so that the oldest is evicted first; a tuple, not an object: one is
        made for every task."""
        self.unlabelled: dict[str, dict[str, int]] = {}
        """hostname -> {task event type: count}, kept only when the worker label is off (with it
        on, ``task_counts`` already holds them)."""
        self._exception_classes: set[str] = set()
        self._custom_event_types = 0

    def count(self, events: Sequence[Any], received_at: float) -> int:
        """Count decoded events (a ``task.multi`` list, or one event) received at
        ``received_at``; returns how many were task events (the recent-task store wants their
        message). Never raises on bad input: it is counted in ``rejected``."""
        by_type = self.events_by_type
        task_counts = self.task_counts
        tracked_tasks = self.tracked
        settings = self.settings
        worker_label = settings.worker_label
        max_tracked = settings.max_tracked_tasks
        queue_wait, wait_bounds = self.queue_wait, settings.queue_wait_buckets
        runtimes, run_bounds = self.runtime, settings.runtime_buckets
        task_events = 0
        for event in events:
            try:
                event_type, hostname, uuid = validate(event)
                try:
                    by_type[event_type] += 1
                except KeyError:  # the first of its type
                    self._count_new_event_type(event_type)
                counts = task_counts.get(event_type)
                if counts is None:  # not a task state: worker events, task-sent, custom
                    if event_type in _WORKER_EVENTS:
                        apply_worker_event(self.workers, event, event_type, hostname, received_at)
                    elif event_type == TASK_SENT:
                        self._count_sent(event)
                        task_events += 1
                    continue

                name = event.get("name")
                tracked = tracked_tasks.get(uuid)
                if event_type == TASK_RECEIVED:
                    if (type(name) is not str and not isinstance(name, str)) or not name:
                        name = tracked[0] if tracked else UNKNOWN_TASK
                    timestamp = event.get("timestamp")
                    # A retry is received again: move it to the young end.
                    if tracked is not None:
                        del tracked_tasks[uuid]
                    tracked_tasks[uuid] = (
                        name,
                        timestamp if isinstance(timestamp, (int, float)) else None,
                    )
                    if len(tracked_tasks) > max_tracked:
                        del tracked_tasks[next(iter(tracked_tasks))]
                elif (
                    name is None
                    or (type(name) is not str and not isinstance(name, str))
                    or not name
                ):
                    name = tracked[0] if tracked else UNKNOWN_TASK

                if worker_label:
                    key = (name, hostname)
                else:
                    key = (name, "")
                    self._count_unlabelled(hostname, event_type)
                try:
                    counts[key] += 1
                except KeyError:
                    counts[key] = 1

                # The one observation a task event may make: queue wait or runtime.
                histograms: dict[TaskKey, Histogram] | None = None
                if event_type == TASK_STARTED:
                    started = event.get("timestamp")
                    if (
                        tracked is not None
                        and tracked[1] is not None
                        and (
                            (type(started) is float and -_INF < started < _INF)
                            or is_number(started)
                        )
                    ):
                        value = float(started) - tracked[1]
                        if not value > 0.0:  # NaN too, as a received timestamp may be
                            value = 0.0
                        histograms, bounds = queue_wait, wait_bounds
                elif event_type == TASK_SUCCEEDED:
                    runtime = event.get("runtime")
                    if type(runtime) is float and 0 <= runtime < _INF:
                        value = runtime
                        histograms, bounds = runtimes, run_bounds
                    elif is_number(runtime) and runtime >= 0:
                        value = float(runtime)
                        histograms, bounds = runtimes, run_bounds
                    if tracked is not None:
                        del tracked_tasks[uuid]
                elif event_type == TASK_FAILED:
                    # Not forgotten yet: a task that raised Reject fails first, then is rejected.
                    self._count_exception(name, event.get("exception"))
                elif event_type in (TASK_REJECTED, TASK_REVOKED) and tracked:
                    del tracked_tasks[uuid]
                if histograms is not None:
                    try:
                        histogram = histograms[key]
                    except KeyError:
                        histogram = histograms[key] = Histogram.empty(bounds)
                    histogram.counts[bisect_left(bounds, value)] += 1
                    histogram.total += value
                task_events += 1
            except Rejected as rejection:
                if rejection.event_type is not None:  # it arrived, unusable as it is
                    self._count_new_event_type(rejection.event_type)
                self.reject(rejection.reason, str(rejection))
            except Exception as exc:  # a bug or an input we did not foresee: count it, go on
                self.reject(INVALID_FIELD, f"{type(exc).__name__}: {exc}")
        return task_events

    def reject(self, reason: str, detail: str = "") -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if self.on_reject is not None:
            self.on_reject(reason, detail)

    def _count_new_event_type(self, event_type: str) -> None:
        """Count an event of a type not necessarily seen before, within the custom-type cap."""
        counts = self.events_by_type
        if event_type in counts:
            counts[event_type] += 1
        elif event_type in KNOWN_EVENT_TYPES:
            counts[event_type] = 1
        elif self._custom_event_types < MAX_CUSTOM_EVENT_TYPES:
            self._custom_event_types += 1
            counts[event_type] = 1
        else:
            counts[OTHER] = counts.get(OTHER, 0) + 1

    def _count_unlabelled(self, hostname: str, event_type: str) -> None:
        counts = self.unlabelled.get(hostname)
        if counts is None:
            counts = self.unlabelled[hostname] = {}
        counts[event_type] = counts.get(event_type, 0) + 1

    def _count_sent(self, event: dict[str, Any]) -> None:
        name = event.get("name")
        queue = event.get("queue")
        key = (
            name if isinstance(name, str) and name else UNKNOWN_TASK,
            queue if isinstance(queue, str) else "",
        )
        self.sent[key] = self.sent.get(key, 0) + 1

    def _count_exception(self, task: str, exception: Any) -> None:
        cls = exception_class(exception)
        if cls not in self._exception_classes:
            if len(self._exception_classes) >= self.settings.max_exception_classes:
                cls = OTHER
            else:
                self._exception_classes.add(cls)
        key = (task, cls)
        self.exceptions[key] = self.exceptions.get(key, 0) + 1

    def worker_task_counts(self) -> dict[str, dict[str, int]]:
        """Task events counted per worker: hostname -> {event type: count}."""
        if not self.settings.worker_label:
            return {host: dict(counts) for host, counts in self.unlabelled.items()}
        found: dict[str, dict[str, int]] = {}
        for event_type, counts in self.task_counts.items():
            for (_, hostname), count in counts.items():
                host_counts = found.get(hostname)
                if host_counts is None:
                    host_counts = found[hostname] = {}
                host_counts[event_type] = host_counts.get(event_type, 0) + count
        return found

    def forget_worker(self, host: str) -> None:
        """Drop a worker and every series labelled with it."""
        self.workers.pop(host, None)
        self.unlabelled.pop(host, None)
        if self.settings.worker_label:
            series: list[dict[TaskKey, Any]] = [
                *self.task_counts.values(),
                self.runtime,
                self.queue_wait,
            ]
            for family in series:
                for key in [key for key in family if key[1] == host]:
                    del family[key]
