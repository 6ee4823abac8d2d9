"""What readers get from the state: copies taken under its lock, read after it is released."""

from __future__ import annotations

from dataclasses import dataclass

from celery_events_exporter.state.workers import WorkerState

TaskKey = tuple[str, str]
"""(task name, worker hostname); the hostname is "" when the worker label is turned off."""


@dataclass
class WorkerView:
    """A worker as a scrape sees it: the state plus what liveness rules derive from it."""

    state: WorkerState
    online: bool


@dataclass
class Snapshot:
    """A consistent copy of what a scrape renders."""

    task_counts: dict[str, dict[TaskKey, int]]
    sent: dict[tuple[str, str], int]
    exceptions: dict[tuple[str, str], int]
    orphaned: dict[TaskKey, int]
    """Tasks started on a worker that vanished (``celery_task_orphaned_total``)."""
    runtime: dict[TaskKey, tuple[int, ...]]
    """Per-bucket counts per key, the sums in ``runtime_sums``: not a ``Histogram`` (or a list)
    per key, whose copies would lengthen the time a scrape holds the lock and set off the
    garbage collector (see bench/README.md)."""
    runtime_sums: dict[TaskKey, float]
    queue_wait: dict[TaskKey, tuple[int, ...]]
    queue_wait_sums: dict[TaskKey, float]
    workers: list[WorkerView]
    events_by_type: dict[str, int]
    rejected: dict[str, int]
    tracked_tasks: int
    label_overflow: dict[tuple[str, str], int]
    """(label, reason) -> values folded into "other" or cut
    (``celery_events_exporter.state.labels``)."""
    unlabelled: dict[str, dict[str, int]] | None
    """Without the worker label, task events counted per worker (hostname -> {event type:
    count}); None with it (the task series hold them)."""


@dataclass
class WorkerRow:
    """One worker as the Workers view (``/api/workers``) shows it."""

    worker: WorkerState
    online: bool
    task_counts: dict[str, int] | None
    """Task events counted from the worker, by event type; None before its first one."""


@dataclass(frozen=True)
class QueueViews:
    """The task ledger's views for the queue families."""

    prefetched: dict[str, int]
    """Online worker (as of the last sweep) -> tasks received and not started."""
    oldest_waiting: dict[str, float]
    """Queue -> when the exporter received the task-sent of its oldest waiting task."""
