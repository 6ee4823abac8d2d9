"""Counting events: the tables the event stream fills, and the loop that fills them.

``Counts`` is not thread-safe: ``State`` holds its lock around every call. ``count`` runs for
every event the exporter receives: it takes a task event as the schema decoder made it
(``events/schema.py``: checked, with the fields the handlers read), checks any other event
(``validate``), and calls one function per event type (``_handlers``), which counts the event
and writes its task's ledger entry (``ledger.py``) and files its change for the state's
subscribers. The three events every task sends write their series count out (a call per event
costs more than what it would share). ``tests/reference_counts.py`` says the same thing
plainly, and a property test holds the two to the same results.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery_events_exporter.events.exceptions import exception_class
from celery_events_exporter.events.schema import TaskEvent, from_dict
from celery_events_exporter.events.validate import (
    INVALID_FIELD,
    Rejected,
    is_number,
    validate,
)
from celery_events_exporter.events.vocabulary import (
    KNOWN_EVENT_TYPES,
    MAX_CUSTOM_EVENT_TYPE_LENGTH,
    MAX_CUSTOM_EVENT_TYPES,
    TASK_EVENTS,
    TASK_FAILED,
    TASK_RECEIVED,
    TASK_REJECTED,
    TASK_RETRIED,
    TASK_REVOKED,
    TASK_SENT,
    TASK_STARTED,
    TASK_STATE_EVENTS,
    TASK_SUCCEEDED,
    WORKER_EVENTS,
    WORKER_OFFLINE,
)
from celery_events_exporter.state.histogram import Histogram
from celery_events_exporter.state.labels import (
    CAP,
    EXCEPTION,
    OTHER,
    QUEUE,
    TASK,
    WORKER,
    LabelCaps,
    cut,
    fits,
)
from celery_events_exporter.state.ledger import (
    NAME,
    STATE,
    Entry,
    Ledger,
    new_entry,
)
from celery_events_exporter.state.ledger import (
    WORKER as ENTRY_WORKER,
)
from celery_events_exporter.state.settings import StateSettings
from celery_events_exporter.state.snapshot import TaskKey
from celery_events_exporter.state.workers import WorkerState, apply_worker_event

UNKNOWN_TASK = "unknown"
"""The task label for events whose task name the exporter never saw (it started after the task
was received, or the task is not registered on the worker)."""

__all__ = ["OTHER", "UNKNOWN_TASK", "Counts", "RejectHook"]

ChangeLog = list[Any]
"""The task changes of a batch as the loop files them, flat: for each message, a tuple
(received_at, its JSON body or, when there is none, its events), then (the event's position in
the message, the task's name as the ledger knows it, its worker as the ledger knows it) for each
of its task events; ``feed.ChangeBatch`` makes ``TaskChange`` objects of them when read."""

Handler = Callable[[Any, int, float], None]
"""(event, its position in its message, received_at) -> None: counts one validated event, a
``TaskEvent`` for a task event, else the event as decoded (a dict)."""

RejectHook = Callable[[str, str], None]
"""(reason, detail) -> None: told of every rejected event (the exporter logs them)."""

_INF = math.inf
_TASK_EVENTS = frozenset(TASK_EVENTS)

MAX_GREETINGS = 10_000
"""Workers waiting to be greeted by the controller, at most (a flood of crafted hostnames must
not grow memory; the periodic broadcast reaches any left out)."""

SENT_SEEN_STEP = 1.0
"""Seconds: a task-sent series' last-seen time is moved only when it is older than this, so
``sent_seen`` stays in order of the times (the oldest first) at one dict look-up per event for
a series sent often."""

MAX_ENDED_NAMES = 10_000
"""Names of tasks that failed, were rejected or revoked, kept to name a later event of theirs
(Celery 5.7 sends task-rejected after task-failed for Reject) without counting them as tracked."""


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
        self.sent_seen: dict[tuple[str, str], float] = {}
        """(task name, queue) of ``sent`` -> when its last task-sent was received (to within
        ``SENT_SEEN_STEP``), the oldest first: what ``expire_sent`` goes by. A task-sent comes
        from a client, which sends no heartbeat, and may name any task and queue: such a series
        has no worker to be purged with, so it ages out unless a worker holds its name."""
        self.exceptions: dict[tuple[str, str], int] = {}
        """(task name, exception class) -> failures."""
        self.runtime: dict[TaskKey, Histogram] = {}
        self.queue_wait: dict[TaskKey, Histogram] = {}
        self.workers: dict[str, WorkerState] = {}
        self.events_by_type: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.ledger = Ledger(settings.max_tracked_tasks)
        """The tasks received (or sent) and not finished, oldest first (``ledger.py``)."""
        self.changes: ChangeLog | None = None
        """The task changes of the batch being counted, for the state's subscribers; None when
        there are none (nothing is filed then)."""
        self._handlers: dict[str, Handler] = {
            TASK_RECEIVED: self._received,
            TASK_STARTED: self._started,
            TASK_SUCCEEDED: self._succeeded,
            TASK_SENT: self._sent,
            **dict.fromkeys(
                (TASK_FAILED, TASK_RETRIED, TASK_REJECTED, TASK_REVOKED), self._other_task_event
            ),
            **dict.fromkeys(WORKER_EVENTS, self._worker_event),
        }
        """Event type -> what counts it; a type not here is counted by type only."""
        self.unlabelled: dict[str, dict[str, int]] = {}
        """hostname -> {task event type: count}, kept only when the worker label is off (with it
        on, ``task_counts`` already holds them)."""
        self.ended: dict[str, str] = {}
        """uuid -> name of tasks that ended with no success, oldest first (MAX_ENDED_NAMES)."""
        self.greetings: deque[str] = deque(maxlen=MAX_GREETINGS)
        """Hostnames of workers just heard of (first heartbeat, or worker-online: a start), for
        the controller to switch their task events on and learn their tasks; deque's append and
        popleft are thread-safe."""
        self.caps = LabelCaps(
            max_task_names=settings.max_task_names,
            max_workers=settings.max_workers,
            max_queues=settings.max_queues,
            max_length=settings.max_label_length,
        )
        """The admitted label values and the overflow counts."""
        self.orphaned: dict[TaskKey, int] = {}
        """(task, worker) -> tasks the worker had started when it vanished without a goodbye
        (found by the ledger's sweep, counted through ``count_orphaned``)."""
        self.series_names: dict[str, set[str]] = {}
        """hostname -> the task names it has series under (with the worker label): what
        ``forget_worker`` deletes, without a scan of every series."""
        self.name_hosts: dict[str, int] = {}
        """task name -> how many workers have series under it (with the worker label): when a
        purge takes it to 0, the name gives its place under the cap back."""
        self.exception_classes: set[str] = set()
        """The exception classes admitted under ``max_exception_classes``."""
        self.last_event: dict[str, float] = {}
        """worker label value -> when its last task event was received (with the worker label,
        per message: the worker of the message's last task event): what a purge goes by for a
        worker that sends no heartbeats (``celery worker --without-heartbeat``)."""
        self._last_key: TaskKey | None = None
        """The series key of the last task event counted in the message at hand: the task event
        handlers leave it here, ``count`` writes ``last_event`` from it once per message."""
        self._custom_event_types = 0

    def count(self, events: Sequence[Any], received_at: float) -> None:
        """Count decoded events (a ``task.multi`` list, or one event) received at
        ``received_at`` and write their tasks' ledger entries; each task event counted is also
        filed in ``changes`` (when it is a list: the state's subscribers want them), and the
        worker of the message's last task event is noted in ``last_event``. Never raises on
        bad input: it is counted in ``rejected``.

        A ``TaskEvent`` (``events/schema.py``) was checked as it was decoded; any other event
        (a dict: decoded in full) is checked here, and a task event made a ``TaskEvent``. Then
        one function per event type (``_handlers``)."""
        by_type = self.events_by_type
        handlers = self._handlers
        for index, event in enumerate(events):
            try:
                if type(event) is TaskEvent:
                    event_type = event.type
                else:
                    event_type, hostname, uuid = validate(event)
                    if event_type in _TASK_EVENTS:
                        event = from_dict(event, event_type, hostname, uuid)
                try:
                    by_type[event_type] += 1
                except KeyError:  # the first of its type
                    self._count_new_event_type(event_type)
                handler = handlers.get(event_type)
                if handler is not None:  # else a custom event: counted by type only
                    handler(event, index, received_at)
            except Rejected as rejection:
                if rejection.event_type is not None:  # it arrived, unusable as it is
                    self._count_new_event_type(rejection.event_type)
                self.reject(rejection.reason, str(rejection))
            except Exception as exc:  # a bug or an input we did not foresee: count it, go on
                self.reject(INVALID_FIELD, f"{type(exc).__name__}: {exc}")
        key = self._last_key
        if key is not None:
            self._last_key = None
            if self.settings.worker_label:
                # Once per message, not per event: a worker's messages carry its own events only.
                self.last_event[key[1]] = received_at

    # The task events, the frequent ones first. Each resolves the task's name (the event's, cut
    # to the label-length cap, else the ledger's), updates the ledger entry, counts the
    # (name, worker) series and files the change; the series count is written out in the three
    # that every task sends (a call per event costs more than the counting it would share).

    def _received(self, event: TaskEvent, index: int, at: float) -> None:
        max_length = self.settings.max_label_length
        uuid = event.uuid
        hostname = event.hostname
        ledger = self.ledger
        tasks = ledger.tasks
        tracked = tasks.get(uuid)
        name = event.name
        if (type(name) is not str and not isinstance(name, str)) or not name:
            name = tracked[0] if tracked else self.ended.get(uuid, UNKNOWN_TASK)
        elif name not in self.caps.admitted[TASK] and not fits(name, max_length):
            # (An admitted name was cut before: the common case asks no function.)
            name = self.caps.cut(TASK, name)  # before it is tracked: bounded bytes
        timestamp = event.timestamp
        # As the worker records are (their keys are cut already).
        host = hostname if hostname in self.workers else cut(hostname, max_length)
        if ledger.departed and host in ledger.departed:
            ledger.back(host)  # started again since its goodbye
        # A retry is received again: move it to the young end.
        if tracked is not None:
            del tasks[uuid]
            if tracked[4] is not None:
                ledger.unwait(uuid, tracked)
            attempt = tracked[6] + 1
            sent_at = tracked[5]
        else:
            attempt = 1
            sent_at = None
        tasks[uuid] = [
            name,
            timestamp if isinstance(timestamp, (int, float)) else None,
            host,
            TASK_RECEIVED,
            None,
            sent_at,
            attempt,
        ]
        if len(tasks) > self.settings.max_tracked_tasks:
            ledger.evict()

        counts = self.task_counts[TASK_RECEIVED]
        if self.settings.worker_label:
            key = (name, hostname)
        else:
            key = (name, "")
            self._count_unlabelled(hostname, event.type, at)
        try:
            counts[key] += 1
        except KeyError:
            key = self._new_series(counts, name, hostname)
        self._last_key = key
        changes = self.changes
        if changes is not None:  # flat: no object made per change (feed.py)
            changes.append(index)
            changes.append(name)
            changes.append(host)

    def _started(self, event: TaskEvent, index: int, at: float) -> None:
        uuid = event.uuid
        hostname = event.hostname
        tracked = self.ledger.tasks.get(uuid)
        name = event.name
        if name is None or (type(name) is not str and not isinstance(name, str)) or not name:
            name = tracked[0] if tracked else self.ended.get(uuid, UNKNOWN_TASK)
        elif not fits(name, self.settings.max_label_length):
            name = self.caps.cut(TASK, name)
        if tracked is not None:
            if tracked[4] is not None:  # news from a worker: it no longer waits
                self.ledger.unwait(uuid, tracked)
            tracked[3] = TASK_STARTED
        if tracked is None or tracked[2] is None:
            tracked = self._started_unseen(uuid, name, hostname, tracked)

        counts = self.task_counts[TASK_STARTED]
        if self.settings.worker_label:
            key = (name, hostname)
        else:
            key = (name, "")
            self._count_unlabelled(hostname, event.type, at)
        try:
            counts[key] += 1
        except KeyError:
            key = self._new_series(counts, name, hostname)
        self._last_key = key
        received = tracked[1]
        if received is not None:  # queue wait: received to started, on the worker's clock
            started = event.timestamp
            if (type(started) is float and -_INF < started < _INF) or is_number(started):
                value = float(started) - received
                if not value > 0.0:  # NaN too, as a received timestamp may be
                    value = 0.0
                self._observe(self.queue_wait, key, value, self.settings.queue_wait_buckets)
        changes = self.changes
        if changes is not None:
            changes.append(index)
            changes.append(name)
            changes.append(tracked[2])

    def _succeeded(self, event: TaskEvent, index: int, at: float) -> None:
        uuid = event.uuid
        hostname = event.hostname
        tasks = self.ledger.tasks
        tracked = tasks.get(uuid)
        name = event.name
        if name is None or (type(name) is not str and not isinstance(name, str)) or not name:
            name = tracked[0] if tracked else self.ended.get(uuid, UNKNOWN_TASK)
        elif not fits(name, self.settings.max_label_length):
            name = self.caps.cut(TASK, name)
        if tracked is not None and tracked[4] is not None:
            self.ledger.unwait(uuid, tracked)

        counts = self.task_counts[TASK_SUCCEEDED]
        if self.settings.worker_label:
            key = (name, hostname)
        else:
            key = (name, "")
            self._count_unlabelled(hostname, event.type, at)
        try:
            counts[key] += 1
        except KeyError:
            key = self._new_series(counts, name, hostname)
        self._last_key = key
        runtime = event.runtime
        if type(runtime) is float and 0 <= runtime < _INF:
            self._observe(self.runtime, key, runtime, self.settings.runtime_buckets)
        elif is_number(runtime) and runtime >= 0:
            self._observe(self.runtime, key, float(runtime), self.settings.runtime_buckets)
        if tracked is not None:
            del tasks[uuid]
        changes = self.changes
        if changes is not None:
            changes.append(index)
            changes.append(name)
            changes.append(None if tracked is None else tracked[2])

    def _other_task_event(self, event: TaskEvent, index: int, at: float) -> None:
        """task-failed, task-retried, task-rejected, task-revoked: rarer, one function."""
        uuid = event.uuid
        hostname = event.hostname
        event_type = event.type
        tracked = self.ledger.tasks.get(uuid)
        name = event.name
        if name is None or (type(name) is not str and not isinstance(name, str)) or not name:
            name = tracked[0] if tracked else self.ended.get(uuid, UNKNOWN_TASK)
        elif not fits(name, self.settings.max_label_length):
            name = self.caps.cut(TASK, name)
        if tracked is not None:
            if tracked[4] is not None:
                self.ledger.unwait(uuid, tracked)
            tracked[3] = event_type
        ledger_name = name

        counts = self.task_counts[event_type]
        if self.settings.worker_label:
            key = (name, hostname)
        else:
            key = (name, "")
            self._count_unlabelled(hostname, event_type, at)
        try:
            counts[key] += 1
        except KeyError:
            key = self._new_series(counts, name, hostname)
            name = key[0]
        self._last_key = key
        if event_type == TASK_FAILED:
            self._count_exception(name, event.exception)
            if tracked is not None:
                self._end(uuid, name)
        elif event_type != TASK_RETRIED and tracked:
            self._end(uuid, name)
        changes = self.changes
        if changes is not None:
            changes.append(index)
            changes.append(ledger_name)
            changes.append(None if tracked is None else tracked[2])

    def _sent(self, event: TaskEvent, index: int, at: float) -> None:
        self._count_sent(event, index, at)

    def _new_series(self, counts: dict[TaskKey, int], name: str, hostname: str) -> TaskKey:
        """Count a series not met yet: a new one, or values past a cap or too long (which never
        make a key of their own, so they come here every time): the labels' one check."""
        key = self._series_key(name, hostname)
        try:
            counts[key] += 1
        except KeyError:  # the pair's first event: its other series start at 0
            self.seed(key)
            counts[key] = 1
        return key

    @staticmethod
    def _observe(
        histograms: dict[TaskKey, Histogram], key: TaskKey, value: float, bounds: tuple[float, ...]
    ) -> None:
        try:
            histogram = histograms[key]
        except KeyError:
            histogram = histograms[key] = Histogram.empty(bounds)
        histogram.counts[bisect_left(bounds, value)] += 1
        histogram.total += value

    def _started_unseen(self, uuid: str, name: str, hostname: str, tracked: Entry | None) -> Entry:
        """A task-started whose task-received the ledger missed (or a task only sent so far):
        the worker that started it is known from here."""
        host = cut(hostname, self.settings.max_label_length)
        ledger = self.ledger
        if ledger.departed and host in ledger.departed:
            ledger.back(host)
        if tracked is None:
            tracked = ledger.tasks[uuid] = new_entry(name, TASK_STARTED)
            if len(ledger.tasks) > self.settings.max_tracked_tasks:
                ledger.evict()
        tracked[2] = host
        return tracked

    def _worker_event(self, event: dict[str, Any], index: int, received_at: float) -> None:
        event_type = event["type"]  # validated
        hostname = event["hostname"]
        if apply_worker_event(
            self.worker_state, event, event_type, hostname, received_at, self.started_count
        ) and fits(hostname, self.settings.max_label_length):
            # A longer hostname is no worker's to send a broadcast to.
            self.greetings.append(hostname)
        if event_type == WORKER_OFFLINE:
            self.ledger.goodbye(cut(hostname, self.settings.max_label_length))

    @property
    def tracked(self) -> dict[str, Entry]:
        """The ledger's entries: uuid -> entry (``ledger.py``), oldest first."""
        return self.ledger.tasks

    def _end(self, uuid: str, name: str) -> None:
        """Stop tracking a task that failed, was rejected or revoked; keep its name a while:
        a task that raised Reject fails first, then is rejected."""
        del self.ledger.tasks[uuid]
        ended = self.ended
        ended[uuid] = name
        if len(ended) > MAX_ENDED_NAMES:
            del ended[next(iter(ended))]

    def seed(self, key: TaskKey) -> None:
        """Create ``key``'s state counters and histograms at 0 where they do not exist: a
        series whose first sample is 1 shows no increase() in Prometheus."""
        for counts in self.task_counts.values():
            if key not in counts:
                counts[key] = 0
        if key not in self.runtime:
            self.runtime[key] = Histogram.empty(self.settings.runtime_buckets)
        if key not in self.queue_wait:
            self.queue_wait[key] = Histogram.empty(self.settings.queue_wait_buckets)

    def seed_tasks(self, hostname: str, names: Sequence[str]) -> int:
        """Create the series of the tasks a worker has registered at 0, up to
        ``max_registered_tasks`` of them, each name through the caps as an event's would be;
        returns how many names the cap left out."""
        limit = self.settings.max_registered_tasks
        caps = self.caps
        for name in names[:limit]:
            self.seed(self._series_key(caps.cut(TASK, name), hostname))
        return max(0, len(names) - limit)

    def learn_names(self, names: Mapping[str, str]) -> None:
        """Remember the names of tasks in flight ({uuid: name}, from inspect active/reserved):
        their later events carry none. Only in the ledger's free room: never at the cost of a
        task its events named (no eviction), and not for a task that ended (``ended``)."""
        tracked = self.ledger.tasks
        room = self.settings.max_tracked_tasks - len(tracked)
        for uuid, name in names.items():
            if room <= 0:
                break
            if uuid not in tracked and uuid not in self.ended:
                tracked[uuid] = new_entry(self.caps.cut(TASK, name), None)
                room -= 1

    def started_count(self, hostname: str) -> int:
        """task-started events counted from a worker (its label value) so far, through the
        series index: called at a worker's first heartbeat or its restart, which thousands of
        workers may do at once."""
        if not self.settings.worker_label:
            return self.unlabelled.get(hostname, {}).get(TASK_STARTED, 0)
        started = self.task_counts[TASK_STARTED]
        return sum(started.get((name, hostname), 0) for name in self.series_names.get(hostname, ()))

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
        elif (
            self._custom_event_types < MAX_CUSTOM_EVENT_TYPES
            and len(event_type) <= MAX_CUSTOM_EVENT_TYPE_LENGTH
        ):
            self._custom_event_types += 1
            counts[event_type] = 1
        else:
            counts[OTHER] = counts.get(OTHER, 0) + 1

    def _series_key(self, name: str, hostname: str) -> TaskKey:
        """The key of a task series for ``name`` (cut already) on ``hostname``: each value
        admitted under its cap or ``OTHER``, the hostname cut; indexed for ``forget_worker``."""
        caps = self.caps
        name = caps.label(TASK, name)
        if not self.settings.worker_label:
            return (name, "")
        host = caps.label(WORKER, hostname)
        names = self.series_names.get(host)
        if names is None:
            names = self.series_names[host] = set()
        if name not in names:
            names.add(name)
            self.name_hosts[name] = self.name_hosts.get(name, 0) + 1
        return (name, host)

    def worker_state(self, hostname: str) -> WorkerState | None:
        """The record of the worker ``hostname`` (cut), made if the worker cap has room; None
        past it: such a worker's gauges are not exported, its task events count as
        worker="other"."""
        found = self.workers.get(hostname)
        if found is None:
            host = self.caps.cut(WORKER, hostname)
            found = self.workers.get(host)
            if found is None:
                if self.caps.admit(WORKER, host) is None:
                    return None
                found = self.workers[host] = WorkerState(host)
        return found

    def _count_unlabelled(self, hostname: str, event_type: str, received_at: float) -> None:
        host = hostname
        counts = self.unlabelled.get(hostname)
        if counts is None:
            host = self.caps.label(WORKER, hostname)
            counts = self.unlabelled.get(host)
            if counts is None:
                counts = self.unlabelled[host] = {}
        counts[event_type] = counts.get(event_type, 0) + 1
        self.last_event[host] = received_at

    def _count_sent(self, event: TaskEvent, index: int, received_at: float) -> None:
        uuid = event.uuid
        name = event.name
        queue = event.queue
        key = (
            name if isinstance(name, str) and name else UNKNOWN_TASK,
            queue if isinstance(queue, str) else "",
        )
        sent = self.sent
        name = key[0]
        try:
            sent[key] += 1
        except KeyError:
            caps = self.caps
            name = caps.cut(TASK, name)
            label = caps.admit(TASK, name)
            queue = caps.label(QUEUE, key[1]) if key[1] else ""
            key = (OTHER if label is None else label, queue)
            sent[key] = sent.get(key, 0) + 1
        seen = self.sent_seen
        if received_at - seen.get(key, -_INF) > SENT_SEEN_STEP:
            seen.pop(key, None)  # to the young end: the dict stays in order of the times
            seen[key] = received_at
        if not uuid:
            return
        # Named from here (as cut, not folded, like a received task): a task revoked or expired
        # before a worker received it sends no task-received, only its task-revoked.
        ledger = self.ledger
        entry = ledger.tasks.get(uuid)
        if entry is None:
            if name == UNKNOWN_TASK:
                name = self.ended.get(uuid, UNKNOWN_TASK)
            entry = ledger.tasks[uuid] = new_entry(name, TASK_SENT)
        elif entry[STATE] != TASK_SENT:  # a worker has it already (events out of order)
            self._change(index, entry)
            return
        queue = event.queue
        if type(queue) is str and queue and fits(queue, self.settings.max_label_length):
            ledger.wait(uuid, entry, queue, received_at)
        if len(ledger.tasks) > self.settings.max_tracked_tasks:
            ledger.evict()
        self._change(index, entry)

    def _change(self, index: int, entry: Entry | None) -> None:
        """File a task change for the state's subscribers, if any (see ``changes``)."""
        changes = self.changes
        if changes is not None:
            changes.append(index)
            if entry is None:
                changes.append(UNKNOWN_TASK)
                changes.append(None)
            else:
                changes.append(entry[NAME])
                changes.append(entry[ENTRY_WORKER])

    def _count_exception(self, task: str, exception: Any) -> None:
        cls = exception_class(exception)
        classes = self.exception_classes
        if cls not in classes:
            cls = self.caps.cut(EXCEPTION, cls)
            if cls not in classes:
                if len(classes) >= self.settings.max_exception_classes:
                    cls = OTHER
                    self.caps.overflow[(EXCEPTION, CAP)] += 1
                else:
                    classes.add(cls)
        key = (task, cls)
        self.exceptions[key] = self.exceptions.get(key, 0) + 1

    def worker_task_counts(self) -> dict[str, dict[str, int]]:
        """Task events counted per worker: hostname -> {event type: count}."""
        if not self.settings.worker_label:
            return {host: dict(counts) for host, counts in self.unlabelled.items()}
        found: dict[str, dict[str, int]] = {}
        for event_type, counts in self.task_counts.items():
            for (_, hostname), count in counts.items():
                if not count:  # a series created at 0 ahead of its first event
                    continue
                host_counts = found.get(hostname)
                if host_counts is None:
                    host_counts = found[hostname] = {}
                host_counts[event_type] = host_counts.get(event_type, 0) + count
        return found

    def count_orphaned(self, tasks: Sequence[tuple[str, str]]) -> None:
        """Count tasks found orphaned, each (task name, worker hostname), under the labels an
        event of theirs would have."""
        orphaned = self.orphaned
        for name, hostname in tasks:
            key = self._series_key(self.caps.cut(TASK, name), hostname)
            orphaned[key] = orphaned.get(key, 0) + 1

    def forget_worker(self, host: str) -> int:
        """Drop a worker and every series labelled with it, and free its place under the
        worker cap, and the places of the task names no other worker has series under; returns
        how many task names it had series under (the work done: the index makes it
        proportional to the worker's own series)."""
        self.workers.pop(host, None)
        self.unlabelled.pop(host, None)
        self.last_event.pop(host, None)
        self.caps.release(WORKER, host)
        names = self.series_names.pop(host, None)
        if not names:
            return 0
        families: list[dict[TaskKey, Any]] = [
            *self.task_counts.values(),
            self.runtime,
            self.queue_wait,
            self.orphaned,
        ]
        name_hosts = self.name_hosts
        unused: list[str] = []
        for name in names:
            key = (name, host)
            for family in families:
                family.pop(key, None)
            if name_hosts[name] > 1:
                name_hosts[name] -= 1
            else:
                del name_hosts[name]
                unused.append(name)
        self._release_task_names(unused)
        return len(names)

    def _release_task_names(self, names: list[str]) -> None:
        """Give back the places of task names no worker has series under any more, with their
        task-sent and exception series, and the queue and exception-class places only those
        series held: names that come and go (renamed tasks, deploys) must not fill the cap for
        good."""
        admitted = self.caps.admitted[TASK]
        released = {name for name in names if name in admitted}
        if not released:
            return
        for name in released:
            self.caps.release(TASK, name)
        self.sent = {key: n for key, n in self.sent.items() if key[0] not in released}
        self.sent_seen = {k: at for k, at in self.sent_seen.items() if k[0] not in released}
        self.exceptions = {key: n for key, n in self.exceptions.items() if key[0] not in released}
        self.caps.keep_only(QUEUE, {queue for _, queue in self.sent})
        self.exception_classes &= {cls for _, cls in self.exceptions}

    def holds_name(self, name: str) -> bool:
        """Whether a worker holds task series under ``name`` (with the worker label: a worker
        not purged yet; without it, the name's series, which stay)."""
        if self.settings.worker_label:
            return name in self.name_hosts
        return (name, "") in self.task_counts[TASK_RECEIVED]

    def expire_sent(self, now: float, delay: float, budget: int) -> int:
        """Drop the task-sent series whose last task-sent is more than ``delay`` old and whose
        task name no worker holds (``holds_name``), at most ``budget`` of the oldest looked at;
        give back the places of the task names and queues no series is left under. A series
        whose name a worker holds stays, as long as the name does (its counter must not restart
        while its task runs): ``_release_task_names`` drops it with the name. Returns how many
        series were looked at. A delay of 0 drops none."""
        if delay <= 0:
            return 0
        seen = self.sent_seen
        horizon = now - delay
        old: list[tuple[str, str]] = []
        for key, at in seen.items():
            if at >= horizon or len(old) >= budget:
                break
            old.append(key)
        if not old:
            return 0
        sent = self.sent
        dropped: set[str] = set()
        for key in old:
            del seen[key]
            if not self.holds_name(key[0]) and sent.pop(key, None) is not None:
                dropped.add(key[0])
        if dropped:
            left = {name for name, _ in sent}
            for name in dropped - left:
                self.caps.release(TASK, name)
            self.caps.keep_only(QUEUE, {queue for _, queue in sent})
        return len(old)
