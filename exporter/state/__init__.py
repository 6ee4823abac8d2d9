"""What the event stream has told us: task counts, runtime histograms and worker liveness.

One ``State`` is fed decoded events by the ingest thread and read by the collector at scrape time;
``lock`` guards both sides. The per-event path is plain dict arithmetic on purpose: it runs tens of
thousands of times a second on a busy fleet.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson

from exporter.events.exceptions import exception_class
from exporter.exposition.catalogue import TASK_STATE_COUNTERS

UNKNOWN_TASK = "unknown"
"""The task label for events whose task name the exporter never saw (it started after the task
was received, or the task is not registered on the worker)."""

OTHER = "other"

# Celery's own event types; anything else is a custom event (Task.send_event) and its type name is
# kept only up to MAX_CUSTOM_EVENT_TYPES to bound the cardinality of the events counter.
KNOWN_EVENT_TYPES = frozenset(
    {
        *TASK_STATE_COUNTERS,
        "task-sent",
        "worker-online",
        "worker-heartbeat",
        "worker-offline",
    }
)
MAX_CUSTOM_EVENT_TYPES = 50

TaskObserver = Callable[[bytes | str, float, int], None]
"""(the message's JSON body, received_at, task events counted from it) -> None: called once per
message that carried task events, so that the recent-task store can keep the body and decode it
when someone reads it (a call or an object per event cost as much as counting the event)."""

TaskTracker = Callable[[Sequence[Any], float], None]
"""(a message's decoded events, received_at) -> None."""

TaskKey = tuple[str, str]
"""(task name, worker hostname); the hostname is "" when the worker label is turned off."""


class Rejected(Exception):
    """An event that cannot be used; ``reason`` becomes the rejection metric's label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


@dataclass
class Histogram:
    """Per-bucket (not cumulative) counts, the +Inf bucket last, and the sum of observations."""

    counts: list[int]
    total: float = 0.0

    def cumulative(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        running = 0
        out: list[tuple[str, float]] = []
        labels = (*map(_format_bound, bounds), "+Inf")
        for bound, count in zip(labels, self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


def _format_bound(bound: float) -> str:
    return repr(float(bound))


@dataclass
class WorkerState:
    hostname: str
    last_heartbeat: float = 0.0
    """When the exporter received the worker's last heartbeat (exporter's clock)."""
    freq: float = 0.0
    active: int | None = None
    processed: int | None = None
    loadavg: tuple[float, float, float] | None = None
    software: tuple[str, str, str] = ("", "", "")
    said_goodbye: bool = False
    """worker-offline arrived after the last heartbeat (a clean shutdown)."""
    concurrency: int | None = None
    """The pool's max-concurrency, from inspect stats (heartbeats do not carry it)."""


@dataclass
class WorkerView:
    """A worker as a scrape sees it: the state plus what liveness rules derive from it."""

    state: WorkerState
    online: bool


@dataclass
class Snapshot:
    """A consistent copy of the state, taken under the lock, rendered after it is released."""

    task_counts: dict[str, dict[TaskKey, int]]
    sent: dict[tuple[str, str], int]
    exceptions: dict[tuple[str, str], int]
    runtime: dict[TaskKey, tuple[int, ...]]
    """Per-bucket counts per key, the sums in ``runtime_sums``: not a ``Histogram`` (or a list)
    per key, whose copies made up most of the time a scrape holds the lock, and set off the
    garbage collector (a collection of the whole heap costs tens of ms mid-scrape)."""
    runtime_sums: dict[TaskKey, float]
    queue_wait: dict[TaskKey, tuple[int, ...]]
    queue_wait_sums: dict[TaskKey, float]
    workers: list[WorkerView]
    events_by_type: dict[str, int]
    rejected: dict[str, int]
    tracked_tasks: int


@dataclass
class StateSettings:
    runtime_buckets: tuple[float, ...]
    queue_wait_buckets: tuple[float, ...]
    worker_label: bool = True
    worker_timeout: float = 0.0
    purge_offline_worker_after: float = 0.0
    max_tracked_tasks: int = 100_000
    max_exception_classes: int = 50


@dataclass
class State:
    settings: StateSettings
    lock: threading.Lock = field(default_factory=threading.Lock)
    task_counts: dict[str, dict[TaskKey, int]] = field(
        default_factory=lambda: {event_type: {} for event_type in TASK_STATE_COUNTERS}
    )
    sent: dict[tuple[str, str], int] = field(default_factory=dict)
    exceptions: dict[tuple[str, str], int] = field(default_factory=dict)
    runtime: dict[TaskKey, Histogram] = field(default_factory=dict)
    queue_wait: dict[TaskKey, Histogram] = field(default_factory=dict)
    workers: dict[str, WorkerState] = field(default_factory=dict)
    events_by_type: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    # uuid -> (name, received time), insertion-ordered so the oldest is evicted first; a tuple,
    # not an object: one is made for every task.
    _tracked: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    _exception_classes: set[str] = field(default_factory=set)
    _unlabelled: dict[str, dict[str, int]] = field(default_factory=dict)
    """hostname -> {task event type: count}, kept only when the worker label is off (with it on,
    ``task_counts`` already holds them)."""
    _custom_event_types: int = 0
    on_reject: Callable[[str, str], None] | None = None
    task_observer: TaskObserver | None = None
    """Called (under ``lock``) with each message that carried task events, after they are counted;
    the recent-task store of the Tasks view listens here."""
    task_tracker: TaskTracker | None = None
    """Called (under ``lock``) with every message's events after they are counted: the queue
    tracking (exporter.queues.tracking) follows tasks from sent to started to their end."""

    # -- intake side -------------------------------------------------------------------------

    def apply(self, event: Any, received_at: float) -> None:
        """Count one decoded event. The caller holds ``lock``. Never raises on bad input."""
        self.apply_many((event,), received_at)

    def apply_many(
        self, events: Sequence[Any], received_at: float, body: bytes | str | None = None
    ) -> None:
        """Count decoded events (a ``task.multi`` list, or one event); the caller holds ``lock``.
        ``body`` is the JSON they were decoded from, for the task observer (re-encoded when not
        given). Never raises on bad input.

        This runs for every event, so the task path is written out here, once per batch of
        locals: no helper calls and no attribute chains per event, the common cases first; the
        rare ones fall back to the general checks.
        """
        by_type = self.events_by_type
        task_counts = self.task_counts
        tracked_tasks = self._tracked
        settings = self.settings
        worker_label = settings.worker_label
        max_tracked = settings.max_tracked_tasks
        observer = self.task_observer
        observed = 0
        queue_wait, wait_bounds = self.queue_wait, settings.queue_wait_buckets
        runtimes, run_bounds = self.runtime, settings.runtime_buckets
        for event in events:
            try:
                if type(event) is not dict and not isinstance(event, dict):
                    raise Rejected("not_an_object", f"event is a {type(event).__name__}")
                event_type = event.get("type")
                if not isinstance(event_type, str) or not event_type:
                    raise Rejected("missing_type")
                hostname = event.get("hostname")
                if not isinstance(hostname, str) or not hostname:
                    raise Rejected("missing_hostname", f"{event_type} without hostname")
                if event_type in by_type:  # a type seen before
                    by_type[event_type] += 1
                else:
                    self._count_event_type(event_type)
                counts = task_counts.get(event_type)
                if counts is None:  # not a task state: worker events, task-sent, custom
                    handler = _HANDLERS.get(event_type)
                    if handler is not None and handler(
                        self, event, event_type, hostname, received_at
                    ):
                        observed += 1
                    continue

                uuid = event.get("uuid")
                if (type(uuid) is not str and not isinstance(uuid, str)) or not uuid:
                    raise Rejected("missing_uuid", f"{event_type} without uuid")
                name = event.get("name")
                tracked = tracked_tasks.get(uuid)
                if event_type == "task-received":
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
                elif (type(name) is not str and not isinstance(name, str)) or not name:
                    name = tracked[0] if tracked else UNKNOWN_TASK

                if worker_label:
                    key = (name, hostname)
                else:
                    key = (name, "")
                    self._count_unlabelled(hostname, event_type)
                count = counts.get(key)
                counts[key] = 1 if count is None else count + 1

                if event_type == "task-started":
                    started = event.get("timestamp")
                    if (
                        tracked is not None
                        and tracked[1] is not None
                        and (
                            (type(started) is float and -_INF < started < _INF)
                            or _is_number(started)
                        )
                    ):
                        wait = float(started) - tracked[1]
                        if not wait > 0.0:  # NaN too, as a received timestamp may be
                            wait = 0.0
                        histogram = queue_wait.get(key)
                        if histogram is None:
                            histogram = queue_wait[key] = Histogram([0] * (len(wait_bounds) + 1))
                        histogram.counts[bisect_left(wait_bounds, wait)] += 1
                        histogram.total += wait
                elif event_type == "task-succeeded":
                    runtime = event.get("runtime")
                    if type(runtime) is float and 0 <= runtime < _INF:
                        histogram = runtimes.get(key)
                        if histogram is None:
                            histogram = runtimes[key] = Histogram([0] * (len(run_bounds) + 1))
                        histogram.counts[bisect_left(run_bounds, runtime)] += 1
                        histogram.total += runtime
                    elif _is_number(runtime) and runtime >= 0:
                        _observe(runtimes, key, float(runtime), run_bounds)
                    if tracked is not None:
                        del tracked_tasks[uuid]
                elif event_type == "task-failed":
                    # Not forgotten yet: a task that raised Reject fails first, then is rejected.
                    self._count_exception(name, event.get("exception"))
                elif (event_type == "task-rejected" or event_type == "task-revoked") and tracked:
                    del tracked_tasks[uuid]
                observed += 1
            except Rejected as rejection:
                self.reject(rejection.reason, str(rejection))
            except Exception as exc:  # a bug or an input we did not foresee: count it, go on
                self.reject("invalid_field", f"{type(exc).__name__}: {exc}")
        tracker = self.task_tracker
        if tracker is not None:
            tracker(events, received_at)
        if observer is not None and observed:
            if body is None:
                try:
                    body = orjson.dumps(events)
                except TypeError:  # not what JSON decodes to: the events were rejected above
                    return
            observer(body, received_at, observed)

    def _count_unlabelled(self, hostname: str, event_type: str) -> None:
        counts = self._unlabelled.get(hostname)
        if counts is None:
            counts = self._unlabelled[hostname] = {}
        counts[event_type] = counts.get(event_type, 0) + 1

    def worker_task_counts(self) -> dict[str, dict[str, int]]:
        """Task events counted per worker: hostname -> {event type: count}, for the Workers
        view's columns; call with ``lock`` held."""
        if not self.settings.worker_label:
            return {host: dict(counts) for host, counts in self._unlabelled.items()}
        found: dict[str, dict[str, int]] = {}
        for event_type, counts in self.task_counts.items():
            for (_, hostname), count in counts.items():
                host_counts = found.get(hostname)
                if host_counts is None:
                    host_counts = found[hostname] = {}
                host_counts[event_type] = host_counts.get(event_type, 0) + count
        return found

    def reject(self, reason: str, detail: str = "") -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if self.on_reject is not None:
            self.on_reject(reason, detail)

    def _count_event_type(self, event_type: str) -> None:
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

    def _task_sent(
        self, event: dict[str, Any], event_type: str, hostname: str, received_at: float
    ) -> bool:
        """Count a task-sent; True: the task observer wants it."""
        name = event.get("name")
        queue = event.get("queue")
        key = (
            name if isinstance(name, str) and name else UNKNOWN_TASK,
            queue if isinstance(queue, str) else "",
        )
        self.sent[key] = self.sent.get(key, 0) + 1
        return True

    def _worker_event(
        self, event: dict[str, Any], event_type: str, hostname: str, received_at: float
    ) -> bool:
        """Update a worker's liveness and gauges; False: nothing for the task observer."""
        if event_type != "worker-offline":
            # Checked first: a crafted heartbeat must not even make its worker known.
            freq, active, processed, loadavg = _heartbeat_numbers(event, hostname)
        worker = self.workers.get(hostname)
        if worker is None:
            worker = self.workers[hostname] = WorkerState(hostname)
        if event_type == "worker-offline":
            worker.said_goodbye = True
            return False
        worker.said_goodbye = False
        worker.last_heartbeat = received_at
        # The reply to a receiver's wake-up broadcast is a heartbeat with freq 5 and no load or
        # active fields: it proves the worker is alive, but must not blank the gauges or stretch
        # the liveness window of a worker that beats every 2 s.
        full = "loadavg" in event or "active" in event
        if freq is not None and (full or worker.freq == 0.0):
            worker.freq = freq
        if not full:
            return False
        if active is not None:
            worker.active = active
        if processed is not None:
            worker.processed = processed
        if loadavg is not None:
            worker.loadavg = loadavg
        worker.software = (
            _text(event.get("sw_ident")),
            _text(event.get("sw_ver")),
            _text(event.get("sw_sys")),
        )
        return False

    def _count_exception(self, task: str, exception: Any) -> None:
        cls = exception_class(exception)
        if cls not in self._exception_classes:
            if len(self._exception_classes) >= self.settings.max_exception_classes:
                cls = OTHER
            else:
                self._exception_classes.add(cls)
        key = (task, cls)
        self.exceptions[key] = self.exceptions.get(key, 0) + 1

    def set_concurrency(self, hostname: str, concurrency: int) -> None:
        """Record a worker's pool size from its inspect stats reply; the caller holds ``lock``.
        A worker not heard of yet is remembered too: its heartbeat will make it online."""
        worker = self.workers.get(hostname)
        if worker is None:
            worker = self.workers[hostname] = WorkerState(hostname)
        worker.concurrency = concurrency

    # -- scrape side -------------------------------------------------------------------------

    def is_online(self, worker: WorkerState, now: float) -> bool:
        if worker.said_goodbye or worker.last_heartbeat == 0.0:
            return False
        return now < worker.last_heartbeat + self._timeout(worker)

    def _timeout(self, worker: WorkerState) -> float:
        if self.settings.worker_timeout > 0:
            return self.settings.worker_timeout
        # Celery's rule (celery.events.state.HEARTBEAT_EXPIRE_WINDOW): 2 x the worker's freq.
        return 2.0 * (worker.freq or 2.0)

    def purge_offline_workers(self, now: float) -> list[str]:
        """Forget workers offline for longer than the purge delay, with their task series."""
        delay = self.settings.purge_offline_worker_after
        if delay <= 0:
            return []
        gone = [
            host
            for host, worker in self.workers.items()
            if not self.is_online(worker, now)
            and now - (worker.last_heartbeat + self._timeout(worker)) > delay
        ]
        for host in gone:
            del self.workers[host]
            self._unlabelled.pop(host, None)
            if self.settings.worker_label:
                series: list[dict[TaskKey, Any]] = [
                    *self.task_counts.values(),
                    self.runtime,
                    self.queue_wait,
                ]
                for family in series:
                    for key in [key for key in family if key[1] == host]:
                        del family[key]
        return gone

    def snapshot(self, now: float) -> Snapshot:
        """Copy what a scrape renders; call with ``lock`` held, render after releasing it."""
        return Snapshot(
            task_counts={kind: dict(counts) for kind, counts in self.task_counts.items()},
            sent=dict(self.sent),
            exceptions=dict(self.exceptions),
            runtime={k: tuple(h.counts) for k, h in self.runtime.items()},
            runtime_sums={k: h.total for k, h in self.runtime.items()},
            queue_wait={k: tuple(h.counts) for k, h in self.queue_wait.items()},
            queue_wait_sums={k: h.total for k, h in self.queue_wait.items()},
            workers=[
                WorkerView(
                    WorkerState(**vars(worker)),
                    self.is_online(worker, now),
                )
                for worker in self.workers.values()
            ],
            events_by_type=dict(self.events_by_type),
            rejected=dict(self.rejected),
            tracked_tasks=len(self._tracked),
        )


def _observe(
    histograms: dict[TaskKey, Histogram], key: TaskKey, value: float, bounds: tuple[float, ...]
) -> None:
    histogram = histograms.get(key)
    if histogram is None:
        histogram = histograms[key] = Histogram([0] * (len(bounds) + 1))
    histogram.counts[bisect_left(bounds, value)] += 1
    histogram.total += value


MAX_HEARTBEAT_INTERVAL = 3600.0
"""Longest heartbeat interval (freq) taken as true: a worker goes offline within 2 x freq, so a
crafted 1e308 would keep it online, and unpurged, forever."""
MAX_ACTIVE_TASKS = 1_000_000
MAX_PROCESSED_TASKS = 2**53
"""Largest processed count taken as true (exact as a float, so as a sample value)."""
MAX_LOAD = 1e6

Loadavg = tuple[float, float, float]


def _heartbeat_numbers(
    event: dict[str, Any], hostname: str
) -> tuple[float | None, int | None, int | None, Loadavg | None]:
    """A worker event's freq, active, processed and loadavg, each None when absent; raises
    Rejected("invalid_field") for a value no worker sends (NaN, infinite, negative, out of range,
    of the wrong shape), before anything of the event is applied."""

    def bad(field: str, value: Any) -> Rejected:
        return Rejected("invalid_field", f"{field} {repr(value)[:80]} from {hostname[:200]}")

    freq = event.get("freq")
    if freq is not None and not (_is_number(freq) and 0 < freq <= MAX_HEARTBEAT_INTERVAL):
        raise bad("freq", freq)
    counts: list[int | None] = []
    for name, limit in (("active", MAX_ACTIVE_TASKS), ("processed", MAX_PROCESSED_TASKS)):
        value = event.get(name)
        if value is None:
            counts.append(None)
            continue
        if not (_is_number(value) and 0 <= value <= limit and value == int(value)):
            raise bad(name, value)
        counts.append(int(value))
    loadavg = event.get("loadavg")
    loads: Loadavg | None = None
    if loadavg is not None:
        if not (
            isinstance(loadavg, (list, tuple))
            and len(loadavg) == 3
            and all(_is_number(value) and 0 <= value <= MAX_LOAD for value in loadavg)
        ):
            raise bad("loadavg", loadavg)
        loads = (float(loadavg[0]), float(loadavg[1]), float(loadavg[2]))
    return None if freq is None else float(freq), counts[0], counts[1], loads


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


_INF = math.inf

_Handler = Callable[[State, dict[str, Any], str, str, float], bool]
"""Counts one event that is not a task state; returns whether the task observer wants it."""

# Task states are counted in State.apply_many itself.
_HANDLERS: Mapping[str, _Handler] = {
    "task-sent": State._task_sent,
    "worker-online": State._worker_event,
    "worker-heartbeat": State._worker_event,
    "worker-offline": State._worker_event,
}
