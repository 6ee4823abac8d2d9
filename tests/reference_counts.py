"""The counting of ``celery_events_exporter.state.counting``, written plainly: one small function
per kind of event, no speed tricks. It is the specification the fast loop is held to: a property
test feeds both any sequence of events and compares every table (tests/test_counting_reference.py).
It lives with the tests: the exporter never runs it.

Shared with the fast loop, on purpose: the validation (``celery_events_exporter.events.validate``),
the vocabulary, and the worker updates (``celery_events_exporter.state.workers``), which are not
part of the loop. Of the task ledger it models the membership and order of the entries and the
two fields the counting reads (name, received timestamp); the views are tested on their own.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery_events_exporter.events import vocabulary as v
from celery_events_exporter.events.exceptions import exception_class
from celery_events_exporter.events.validate import INVALID_FIELD, Rejected, is_number, validate
from celery_events_exporter.state.counting import MAX_ENDED_NAMES, OTHER, UNKNOWN_TASK, RejectHook
from celery_events_exporter.state.histogram import Histogram
from celery_events_exporter.state.labels import CAP, EXCEPTION, QUEUE, TASK, WORKER, LabelCaps, fits
from celery_events_exporter.state.settings import StateSettings
from celery_events_exporter.state.snapshot import TaskKey
from celery_events_exporter.state.workers import WorkerState, apply_worker_event


class ReferenceCounts:
    """The same tables as ``Counts``, filled one event at a time."""

    def __init__(self, settings: StateSettings, on_reject: RejectHook | None = None) -> None:
        self.settings = settings
        self.on_reject = on_reject
        self.task_counts: dict[str, dict[TaskKey, int]] = {t: {} for t in v.TASK_STATE_EVENTS}
        self.sent: dict[tuple[str, str], int] = {}
        self.exceptions: dict[tuple[str, str], int] = {}
        self.runtime: dict[TaskKey, Histogram] = {}
        self.queue_wait: dict[TaskKey, Histogram] = {}
        self.orphaned: dict[TaskKey, int] = {}
        self.workers: dict[str, WorkerState] = {}
        self.events_by_type: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.tracked: dict[str, tuple[str, float | None]] = {}
        self.unlabelled: dict[str, dict[str, int]] = {}
        self.ended: dict[str, str] = {}
        self.greetings: list[str] = []
        self.caps = LabelCaps(
            max_task_names=settings.max_task_names,
            max_workers=settings.max_workers,
            max_queues=settings.max_queues,
            max_length=settings.max_label_length,
        )
        self.exception_classes: set[str] = set()
        self.custom_event_types: set[str] = set()
        self.last_event: dict[str, float] = {}
        """worker label -> when its last task event arrived: with the worker label, the worker
        of a message's last task event counted, once per message; without it, every event's."""
        self._last_worker: str | None = None
        self._task_handlers: dict[str, Callable[[dict[str, Any], TaskKey, str], None]] = {
            v.TASK_RECEIVED: lambda event, key, uuid: None,  # tracked before the key is made
            v.TASK_STARTED: self._started,
            v.TASK_SUCCEEDED: self._succeeded,
            v.TASK_FAILED: self._failed,
            v.TASK_RETRIED: lambda event, key, uuid: None,
            v.TASK_REJECTED: self._ended,
            v.TASK_REVOKED: self._ended,
        }

    def count(self, events: Sequence[Any], received_at: float) -> int:
        """Count each event in turn; returns how many task changes the state hands its
        subscribers: task events, but a task-sent without uuid."""
        task_events = 0
        self._last_worker = None
        for event in events:
            try:
                if self._count_one(event, received_at):
                    task_events += 1
            except Rejected as rejection:
                self._reject(rejection.reason, str(rejection))
            except Exception as exc:  # e.g. a number too large for a float: counted so far
                self._reject(INVALID_FIELD, f"{type(exc).__name__}: {exc}")
        if self._last_worker is not None and self.settings.worker_label:
            self.last_event[self._last_worker] = received_at
        return task_events

    def _count_one(self, event: Any, received_at: float) -> bool:
        """Count one event; True if it was a task event. Raises ``Rejected``."""
        try:
            event_type, hostname, uuid = validate(event)
        except Rejected as rejection:
            if rejection.event_type is not None:
                self._count_type(rejection.event_type)
            raise
        self._count_type(event_type)
        if event_type in v.WORKER_EVENTS:
            if apply_worker_event(
                self._worker, event, event_type, hostname, received_at, self._started_count
            ) and fits(hostname, self.settings.max_label_length):
                self.greetings.append(hostname)
            return False
        if event_type == v.TASK_SENT:
            self._count_sent(event, uuid)
            return bool(uuid)
        if event_type not in v.TASK_STATE_EVENTS:
            return False  # a custom event: counted by type only
        name = self._task_name(uuid, event)
        if event_type == v.TASK_RECEIVED:
            self._track(uuid, name, event)
        elif event_type == v.TASK_STARTED and uuid not in self.tracked:
            self._remember(uuid, name)  # its worker is known from here: it may be orphaned
        name = self.caps.label(TASK, name)
        if self.settings.worker_label:
            key = (name, self.caps.label(WORKER, hostname))
        else:
            key = (name, "")
            host = self.caps.label(WORKER, hostname)
            self._add(self.unlabelled.setdefault(host, {}), event_type)
            self.last_event[host] = received_at
        if key not in self.task_counts[event_type]:
            self._seed(key)
        self._add(self.task_counts[event_type], key)
        self._last_worker = key[1]
        self._task_handlers[event_type](event, key, uuid)
        return True

    def _worker(self, hostname: str) -> WorkerState | None:
        """The worker's record under its cut hostname, made if it is or gets admitted."""
        host = self.caps.admit(WORKER, self.caps.cut(WORKER, hostname))
        if host is None:
            return None
        return self.workers.setdefault(host, WorkerState(host))

    def count_orphaned(self, tasks: Sequence[tuple[str, str]]) -> None:
        """Count each (task name, hostname) orphaned, labelled as its events would be."""
        for name, hostname in tasks:
            label = self.caps.label(TASK, self.caps.cut(TASK, name))
            if self.settings.worker_label:
                self._add(self.orphaned, (label, self.caps.label(WORKER, hostname)))
            else:
                self._add(self.orphaned, (label, ""))

    def learn_names(self, names: Mapping[str, str]) -> None:
        """Names of tasks in flight from the workers' inspect replies: remembered in free room
        only (never evicting a task its events named), and never for a task that ended."""
        for uuid, name in names.items():
            if len(self.tracked) >= self.settings.max_tracked_tasks:
                return
            if uuid not in self.tracked and uuid not in self.ended:
                self.tracked[uuid] = (self.caps.cut(TASK, name), None)

    def forget_worker(self, host: str) -> int:
        """Drop a worker, its series (found by looking at every one) and its place; then the
        places of the task names no series is left under, with their sent and exception
        series, and the queue and exception-class places no series uses any more."""
        self.workers.pop(host, None)
        self.unlabelled.pop(host, None)
        self.last_event.pop(host, None)
        self.caps.release(WORKER, host)
        if not self.settings.worker_label:
            return 0
        families: list[dict[TaskKey, Any]] = [
            *self.task_counts.values(),
            self.runtime,
            self.queue_wait,
            self.orphaned,
        ]
        had = {key[0] for family in families for key in family if key[1] == host}
        for family in families:
            for key in [key for key in family if key[1] == host]:
                del family[key]
        left = {key[0] for family in families for key in family}
        released = {name for name in had - left if name in self.caps.admitted[TASK]}
        if released:
            for name in released:
                self.caps.release(TASK, name)
            self.sent = {key: n for key, n in self.sent.items() if key[0] not in released}
            self.exceptions = {k: n for k, n in self.exceptions.items() if k[0] not in released}
            self.caps.keep_only(QUEUE, {queue for _, queue in self.sent})
            self.exception_classes &= {cls for _, cls in self.exceptions}
        return 0

    def _count_type(self, event_type: str) -> None:
        if event_type in v.KNOWN_EVENT_TYPES or event_type in self.custom_event_types:
            self._add(self.events_by_type, event_type)
        elif (
            len(self.custom_event_types) < v.MAX_CUSTOM_EVENT_TYPES
            and len(event_type) <= v.MAX_CUSTOM_EVENT_TYPE_LENGTH
        ):
            self.custom_event_types.add(event_type)
            self._add(self.events_by_type, event_type)
        else:
            self._add(self.events_by_type, OTHER)

    def _count_sent(self, event: dict[str, Any], uuid: str) -> None:
        """Count a task-sent; a named one names its task from now on (a task revoked before
        any worker received it sends no task-received)."""
        name, queue = event.get("name"), event.get("queue")
        if not isinstance(name, str) or not name:
            name = UNKNOWN_TASK
        if not isinstance(queue, str):
            queue = ""
        name = self.caps.cut(TASK, name)
        label = self.caps.admit(TASK, name)
        queue = self.caps.label(QUEUE, queue) if queue else ""
        self._add(self.sent, (OTHER if label is None else label, queue))
        if uuid and uuid not in self.tracked:
            self._remember(uuid, self.ended.get(uuid, name) if name == UNKNOWN_TASK else name)

    def _remember(self, uuid: str, name: str) -> None:
        """A task first heard of by an event that is not its task-received."""
        self.tracked[uuid] = (name, None)
        if len(self.tracked) > self.settings.max_tracked_tasks:
            del self.tracked[next(iter(self.tracked))]

    def _seed(self, key: TaskKey) -> None:
        """A pair's first event: every state counter and histogram of it exists from 0."""
        for counts in self.task_counts.values():
            counts.setdefault(key, 0)
        self.runtime.setdefault(key, Histogram.empty(self.settings.runtime_buckets))
        self.queue_wait.setdefault(key, Histogram.empty(self.settings.queue_wait_buckets))

    def _started_count(self, hostname: str) -> int:
        if not self.settings.worker_label:
            return self.unlabelled.get(hostname, {}).get(v.TASK_STARTED, 0)
        started = self.task_counts[v.TASK_STARTED]
        return sum(count for (_, host), count in started.items() if host == hostname)

    def _task_name(self, uuid: str, event: dict[str, Any]) -> str:
        """The event's name (cut), else the one its task was received (or sent) with, else the
        one it ended with, else "unknown"."""
        name = event.get("name")
        if isinstance(name, str) and name:
            return self.caps.cut(TASK, name)
        if uuid in self.tracked:
            return self.tracked[uuid][0]
        return self.ended.get(uuid, UNKNOWN_TASK)

    def _track(self, uuid: str, name: str, event: dict[str, Any]) -> None:
        """Remember a received task (a retry again, as the youngest) by its name as cut (not
        folded), the oldest forgotten past the bound."""
        timestamp = event.get("timestamp")
        self.tracked.pop(uuid, None)
        self.tracked[uuid] = (name, timestamp if isinstance(timestamp, (int, float)) else None)
        if len(self.tracked) > self.settings.max_tracked_tasks:
            del self.tracked[next(iter(self.tracked))]

    def _started(self, event: dict[str, Any], key: TaskKey, uuid: str) -> None:
        """Queue wait: received to started, on the worker's clock; never below 0."""
        received = self.tracked[uuid][1] if uuid in self.tracked else None
        started = event.get("timestamp")
        if received is None or not is_number(started):
            return
        wait = float(started) - received
        bounds = self.settings.queue_wait_buckets
        self._observe(self.queue_wait, key, wait if wait > 0.0 else 0.0, bounds)

    def _succeeded(self, event: dict[str, Any], key: TaskKey, uuid: str) -> None:
        runtime = event.get("runtime")
        if is_number(runtime) and runtime >= 0:
            self._observe(self.runtime, key, float(runtime), self.settings.runtime_buckets)
        self.tracked.pop(uuid, None)

    def _failed(self, event: dict[str, Any], key: TaskKey, uuid: str) -> None:
        self._ended(event, key, uuid)
        exception = event.get("exception")
        cls = self.caps.cut(EXCEPTION, exception_class(exception))
        if cls not in self.exception_classes:
            if len(self.exception_classes) < self.settings.max_exception_classes:
                self.exception_classes.add(cls)
            else:
                cls = OTHER
                self.caps.overflow[(EXCEPTION, CAP)] += 1
        self._add(self.exceptions, (key[0], cls))

    def _ended(self, event: dict[str, Any], key: TaskKey, uuid: str) -> None:
        """No longer in flight; the name is kept a while (a Reject fails, then is rejected)."""
        if uuid in self.tracked:
            del self.tracked[uuid]
            self.ended[uuid] = key[0]
            if len(self.ended) > MAX_ENDED_NAMES:
                del self.ended[next(iter(self.ended))]

    @staticmethod
    def _observe(
        histograms: dict[TaskKey, Histogram], key: TaskKey, value: float, bounds: tuple[float, ...]
    ) -> None:
        histogram = histograms.setdefault(key, Histogram.empty(bounds))
        histogram.counts[bisect_left(bounds, value)] += 1
        histogram.total += value

    def _reject(self, reason: str, detail: str) -> None:
        self._add(self.rejected, reason)
        if self.on_reject is not None:
            self.on_reject(reason, detail)

    @staticmethod
    def _add(counts: dict[Any, int], key: Any) -> None:
        counts[key] = counts.get(key, 0) + 1
