"""``State``: the counts, fed by the ingest thread and read by scrapes and the API, behind one lock
that only this class takes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from celery_events_exporter.logging import get_logger
from celery_events_exporter.state import labels, workers
from celery_events_exporter.state.counting import Counts, RejectHook
from celery_events_exporter.state.labels import WORKER
from celery_events_exporter.state.settings import StateSettings
from celery_events_exporter.state.snapshot import Snapshot, WorkerRow, WorkerView

log = get_logger(__name__)

TaskObserver = Callable[[bytes | str, float, int], None]
"""(the message's JSON body, received_at, task events counted from it) -> None: called once per
message that carried task events, so that the recent-task store can keep the body and decode it
when someone reads it: once per message, not per event, to keep the ingest thread's cost per
event down (bench/README.md)."""

TaskTracker = Callable[[Sequence[Any], float], None]
"""(a message's decoded events, received_at) -> None: called with every message after it is
counted; the queue tracking (exporter.queues.tracking) follows tasks from sent to their end."""

DecodedMessage = tuple[Sequence[Any], float, bytes | str | None]
"""What one broker message carried: (its events, when it was received, the JSON they were
decoded from, or None to have it re-encoded for the task observer)."""

INTERNAL_ERROR = "internal_error"

PURGE_SLICE = 20_000
"""Workers plus their task names forgotten per purge (per scrape) at most; each task name is a
few dict deletions (one per task family), so a slice takes some tens of milliseconds."""


class State:
    """What the event stream has told us: task counts, runtime histograms and worker liveness.

    Writers hand it decoded events (``apply_batch``: one lock acquisition per batch of
    messages); readers get copies (``snapshot``, ``workers_view``) and render them after the
    lock is released. Under the lock, after a message is counted, ``task_tracker`` (the queue
    tracking) is given its events and ``task_observer`` (the recent-task store's ``keep``) its
    body if it carried task events.
    """

    def __init__(
        self,
        settings: StateSettings,
        *,
        on_reject: RejectHook | None = None,
        task_observer: TaskObserver | None = None,
        task_tracker: TaskTracker | None = None,
    ) -> None:
        self.settings = settings
        self.counts = Counts(settings, on_reject)
        """The tables; read them through ``snapshot`` (tests of the rendering aside)."""
        self._task_observer = task_observer
        self._task_tracker = task_tracker
        self._lock = threading.RLock()
        """Re-entrant: a batch's decoding, under the lock, may reject a message."""

    # -- the ingest side ---------------------------------------------------------------------

    def apply_batch(self, messages: Iterable[DecodedMessage]) -> None:
        """Count the events of several messages, under one acquisition of the lock. Never
        raises on bad input; an exception on one message is counted and the rest go on.
        ``messages`` may be a generator that decodes them one by one: it runs under the lock,
        and may call ``reject``."""
        with self._lock:
            for events, received_at, body in messages:
                try:
                    self._apply(events, received_at, body)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    log.exception("message could not be handled", error=error)
                    self.counts.reject(INTERNAL_ERROR, error)

    def apply_many(
        self, events: Sequence[Any], received_at: float, body: bytes | str | None = None
    ) -> None:
        """Count the events of one message (a ``task.multi`` list, or one event)."""
        self.apply_batch(((events, received_at, body),))

    def apply(self, event: Any, received_at: float) -> None:
        """Count one decoded event."""
        self.apply_batch((((event,), received_at, None),))

    def _apply(self, events: Sequence[Any], received_at: float, body: bytes | str | None) -> None:
        task_events = self.counts.count(events, received_at)
        tracker = self._task_tracker
        if tracker is not None:
            tracker(events, received_at)
        observer = self._task_observer
        if observer is not None and task_events:
            if body is None:
                try:
                    body = orjson.dumps(events)
                except TypeError:  # not what JSON decodes to: the events were rejected
                    return
            observer(body, received_at, task_events)

    def reject(self, reason: str, detail: str = "") -> None:
        """Count input rejected before it became events (bad envelope, JSON...)."""
        with self._lock:
            self.counts.reject(reason, detail)

    def set_concurrency(self, sizes: Mapping[str, int]) -> None:
        """Record workers' pool sizes ({hostname: max-concurrency}, from inspect stats) of the
        workers whose heartbeats were heard; any other hostname is left out (an inspect reply
        makes no worker known)."""
        with self._lock:
            known = self.counts.workers
            for hostname, concurrency in sizes.items():
                worker = known.get(hostname)
                if worker is not None and worker.last_heartbeat > 0:
                    worker.concurrency = concurrency

    def heartbeat_identities(self) -> dict[str, tuple[int | None, int | None]]:
        """{hostname: (pid, active)} as the heartbeats of each worker heard from said them:
        what an inspect ``stats`` reply must agree with."""
        with self._lock:
            return {
                host: (w.pid, w.active)
                for host, w in self.counts.workers.items()
                if w.last_heartbeat > 0
            }

    def known_workers(self) -> set[str]:
        """The hostnames (as labelled) the exporter heard from itself: a heartbeat, or a task
        event counted under the worker's own label."""
        with self._lock:
            counts = self.counts
            known = {host for host, w in counts.workers.items() if w.last_heartbeat > 0}
            known.update(host for host in counts.last_event if host in counts.caps.admitted[WORKER])
            return known

    def worker_label(self, hostname: str) -> str:
        """``hostname`` as the state labels it (cut to the label length cap, uncounted)."""
        return labels.cut(hostname, self.settings.max_label_length)

    def new_workers(self) -> list[str]:
        """Workers heard of for the first time, or (re)started, since the last call: the
        controller greets them (their task events on, their registered tasks' series at 0)."""
        greetings = self.counts.greetings  # a deque: safe without the lock
        hosts: dict[str, None] = {}
        while greetings:
            hosts[greetings.popleft()] = None
        return list(hosts)

    def seed_tasks(self, hostname: str, names: Sequence[str]) -> int:
        """Create the series of a worker's registered tasks at 0 (``max_registered_tasks`` of
        them at most); returns how many names the cap left out."""
        with self._lock:
            return self.counts.seed_tasks(hostname, names)

    def count_orphaned(self, tasks: Sequence[tuple[str, str]]) -> None:
        """Count tasks a worker had started when it vanished without a goodbye, each (task
        name, worker hostname) as the queue tracking found them: labelled, capped and purged
        as the worker's other task series are."""
        with self._lock:
            self.counts.count_orphaned(tasks)

    def learn_names(self, names: Mapping[str, str]) -> None:
        """Remember the names of tasks in flight ({uuid: name}, from the workers' inspect
        active/reserved replies): their later events carry none."""
        with self._lock:
            self.counts.learn_names(names)

    # -- the reading side --------------------------------------------------------------------

    def snapshot(self, now: float) -> Snapshot:
        """Forget the workers offline for longer than the purge delay, then copy what a scrape
        renders."""
        with self._lock:
            self._purge(now)
            counts = self.counts
            worker_timeout = self.settings.worker_timeout
            return Snapshot(
                unlabelled=(
                    None
                    if self.settings.worker_label
                    else {host: dict(c) for host, c in counts.unlabelled.items()}
                ),
                task_counts={kind: dict(series) for kind, series in counts.task_counts.items()},
                sent=dict(counts.sent),
                exceptions=dict(counts.exceptions),
                orphaned=dict(counts.orphaned),
                runtime={k: tuple(h.counts) for k, h in counts.runtime.items()},
                runtime_sums={k: h.total for k, h in counts.runtime.items()},
                queue_wait={k: tuple(h.counts) for k, h in counts.queue_wait.items()},
                queue_wait_sums={k: h.total for k, h in counts.queue_wait.items()},
                workers=[
                    WorkerView(
                        workers.WorkerState(**vars(worker)),
                        workers.is_online(worker, now, worker_timeout),
                    )
                    for worker in counts.workers.values()
                ],
                events_by_type=dict(counts.events_by_type),
                rejected=dict(counts.rejected),
                tracked_tasks=len(counts.tracked),
                label_overflow=dict(counts.caps.overflow),
            )

    def purge_offline_workers(self, now: float) -> list[str]:
        """Forget workers offline for longer than the purge delay, with their task series;
        returns their hostnames. ``snapshot`` does this too."""
        with self._lock:
            return self._purge(now)

    def _purge(self, now: float) -> list[str]:
        """Forget workers long gone, at most ``PURGE_SLICE`` task names' series at a time (the
        next call goes on), so that a scrape waits for a bounded purge whatever went away."""
        settings = self.settings
        counts = self.counts
        gone = workers.long_gone(
            counts.workers,
            now,
            settings.worker_timeout,
            settings.purge_offline_worker_after,
            settings.purge_stopped_worker_after,
            counts.last_event,
        )
        gone.extend(
            host
            for host in workers.silent_gone(
                counts.caps.admitted[WORKER],
                counts.workers,
                counts.last_event,
                now,
                settings.purge_offline_worker_after,
            )
            if host not in counts.workers  # a record's own rule came first
            or counts.workers[host].last_heartbeat == 0.0
        )
        budget = PURGE_SLICE
        purged: list[str] = []
        for host in gone:
            if budget <= 0:
                break
            budget -= 1 + self.counts.forget_worker(host)
            purged.append(host)
        return purged

    def workers_view(self, now: float) -> list[WorkerRow]:
        """Every worker with its liveness and task counts, for the Workers view; copies."""
        with self._lock:
            counts = self.counts
            task_counts = counts.worker_task_counts()
            worker_timeout = self.settings.worker_timeout
            return [
                WorkerRow(
                    workers.WorkerState(**vars(worker)),
                    workers.is_online(worker, now, worker_timeout),
                    task_counts.get(hostname),
                )
                for hostname, worker in counts.workers.items()
            ]

    def online_workers(self, now: float) -> set[str]:
        """The hostnames of the workers online at ``now``."""
        with self._lock:
            timeout = self.settings.worker_timeout
            return {
                host
                for host, worker in self.counts.workers.items()
                if workers.is_online(worker, now, timeout)
            }

    def heard_workers(self) -> set[str]:
        """The hostnames of the workers whose heartbeat arrived at least once."""
        with self._lock:
            return {host for host, w in self.counts.workers.items() if w.last_heartbeat > 0}

    def worker_task_counts(self) -> dict[str, dict[str, int]]:
        """Task events counted per worker: hostname -> {event type: count}."""
        with self._lock:
            return self.counts.worker_task_counts()
