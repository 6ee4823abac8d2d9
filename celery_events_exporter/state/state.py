"""``State``: the counts, fed by the ingest thread and read by scrapes and the API, behind one lock
that only this class takes."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson

from celery_events_exporter.events.vocabulary import TASK_ORPHANED
from celery_events_exporter.logging import get_logger
from celery_events_exporter.scrapes import MAX_INGEST_GIVE_WAY, Scrapes
from celery_events_exporter.state import labels, workers
from celery_events_exporter.state.changes import TaskChangeSink
from celery_events_exporter.state.counting import ChangeLog, Counts, RejectHook
from celery_events_exporter.state.feed import ChangeBatch
from celery_events_exporter.state.ledger import NAME, WORKER
from celery_events_exporter.state.settings import StateSettings
from celery_events_exporter.state.snapshot import QueueViews, Snapshot, WorkerRow, WorkerView

log = get_logger(__name__)

DecodedMessage = tuple[Sequence[Any], float, bytes | str | None]
"""What one broker message carried: (its events, when it was received, the JSON they were
decoded from, or None: then its size for the subscribers' bounds is that of its JSON re-encoded).
The events are ``TaskEvent`` objects when the schema decoder read them
(``events.decode.decode_events``; always with their JSON), else as the JSON holds them; the
subscribers' changes carry each event decoded again in full from the JSON (``feed.py``)."""

INTERNAL_ERROR = "internal_error"

ORPHAN_CHANGE_SIZE = 120
"""Bytes a made-up ``task-orphaned`` change counts for in the subscribers' bounds (its JSON)."""

PURGE_SLICE = 20_000
"""Workers plus their task names forgotten, and task-sent series looked at, per purge (per tick)
at most; each is a few dict deletions (one per task family), so a slice takes some tens of
milliseconds."""


class State:
    """What the event stream has told us: task counts, runtime histograms, worker liveness and
    the task ledger (``ledger.py``).

    Writers hand it decoded events (``apply_batch``: one lock acquisition per batch of
    messages); readers get copies (``snapshot``, ``workers_view``, ``queue_views``) and render
    them after the lock is released; reading never changes anything. What changes with time
    (forgetting workers long gone, finding tasks orphaned) is done by ``tick``, which the ingest
    thread calls between batches. After each batch, outside the lock, every subscriber
    (``subscribe``) is handed the batch's task changes.
    """

    def __init__(
        self,
        settings: StateSettings,
        *,
        on_reject: RejectHook | None = None,
        scrapes: Scrapes | None = None,
    ) -> None:
        self.settings = settings
        self._scrapes = scrapes
        """The scrapes in progress, which a batch ends early for (``apply_batch``)."""
        self._given_way = 0
        """``scrapes.begun`` when the ingest thread last gave way."""
        self.counts = Counts(settings, on_reject)
        """The tables; read them through ``snapshot`` (tests of the rendering aside)."""
        self._sinks: list[TaskChangeSink] = []
        self._lock = threading.RLock()
        """Re-entrant: a batch's decoding, under the lock, may reject a message."""

    def subscribe(self, sink: TaskChangeSink) -> None:
        """Hand ``sink`` the task changes of every batch applied from now on (``changes.py``)."""
        with self._lock:
            self._sinks.append(sink)
            self.counts.changes = []

    # -- the ingest side ---------------------------------------------------------------------

    def apply_batch(self, messages: Iterable[DecodedMessage]) -> None:
        """Count the events of several messages, under one acquisition of the lock, then hand
        the subscribers their task changes. Never raises on bad input; an exception on one
        message is counted and the rest go on. ``messages`` may be a generator that decodes
        them one by one: it runs under the lock, and may call ``reject``.

        When a scrape begins (``scrapes``), the batch ends at the next message (its changes
        handed over), the thread waits for the scrape (``MAX_INGEST_GIVE_WAY`` at most), then
        counts the rest as a batch of its own; once per call and once per scrape, so that
        neither a long scrape nor scrapes back to back hold counting up for long."""
        remaining = iter(messages)
        scrapes = self._scrapes
        if self._apply(remaining, scrapes) and scrapes is not None:
            scrapes.give_way(MAX_INGEST_GIVE_WAY)
            self._apply(remaining, None)

    def _apply(self, messages: Iterator[DecodedMessage], scrapes: Scrapes | None) -> bool:
        """Count ``messages`` until they end, or until a scrape not given way to yet is in
        progress after one of them (then True: some may be left)."""
        counts = self.counts
        size = filed = 0
        stopped = False
        with self._lock:
            changes = counts.changes
            for events, received_at, body in messages:
                try:
                    if changes is None:
                        counts.count(events, received_at)
                    else:
                        before = len(changes)
                        changes.append((received_at, events if body is None else body))
                        try:
                            counts.count(events, received_at)
                        finally:
                            if len(changes) == before + 1:  # no task event in it
                                changes.pop()
                            else:
                                filed += 1
                                size += len(body) if body is not None else _encoded_size(events)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    log.exception("message could not be handled", error=error)
                    counts.reject(INTERNAL_ERROR, error)
                if scrapes is not None and scrapes.active and scrapes.begun != self._given_way:
                    self._given_way = scrapes.begun
                    stopped = True
                    break
            if changes:
                counts.changes = []
        if changes:
            self._publish(ChangeBatch(changes, (len(changes) - filed) // 3, size))
        return stopped

    def _publish(self, batch: ChangeBatch) -> None:
        for sink in self._sinks:
            try:
                sink(batch)
            except Exception as exc:  # a subscriber's bug must not end the ingest thread
                log.exception("a task-change subscriber failed", error=f"{type(exc).__name__}")

    def apply_many(
        self, events: Sequence[Any], received_at: float, body: bytes | str | None = None
    ) -> None:
        """Count the events of one message (a ``task.multi`` list, or one event)."""
        self.apply_batch(((events, received_at, body),))

    def apply(self, event: Any, received_at: float) -> None:
        """Count one decoded event."""
        self.apply_batch((((event,), received_at, None),))

    def tick(self, now: float) -> None:
        """What time does to the state, on the ingest thread between batches: forget workers
        offline for longer than the purge delay (a bounded slice per call), then sweep the
        ledger for tasks orphaned by workers gone without a goodbye."""
        with self._lock:
            self._purge(now)
        self.sweep(now, self.online_workers(now))

    def sweep(self, now: float, online: set[str]) -> None:
        """Count the started tasks of workers online at the previous sweep and absent from
        ``online`` (gone without a goodbye) as orphaned, and hand them to the subscribers as
        ``task-orphaned`` changes; forget the tasks in flight of those workers and of the
        workers that said goodbye."""
        with self._lock:
            lost = self.counts.ledger.sweep(online)
            if lost:
                self.counts.count_orphaned([(entry[NAME], entry[WORKER]) for _, entry in lost])
            subscribed = bool(self._sinks)
        if lost and subscribed:
            made = [
                {"type": TASK_ORPHANED, "uuid": uuid, "hostname": entry[WORKER], "timestamp": now}
                for uuid, entry in lost
            ]
            changes: ChangeLog = [(now, made)]
            for index, (_, entry) in enumerate(lost):
                changes += (index, entry[NAME], entry[WORKER])
            self._publish(ChangeBatch(changes, len(lost), ORPHAN_CHANGE_SIZE * len(lost)))

    def queues_read(self, readings: Mapping[str, Any], started_at: float) -> None:
        """The queue poller's readings (queue -> ``QueueReading``), taken from ``started_at``:
        tasks the broker no longer holds stop waiting in the ledger."""
        with self._lock:
            self.counts.ledger.queues_read(readings, started_at)

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
            known.update(
                host for host in counts.last_event if host in counts.caps.admitted[labels.WORKER]
            )
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
        name, worker hostname) as the ledger's sweep finds them: labelled, capped and purged
        as the worker's other task series are."""
        with self._lock:
            self.counts.count_orphaned(tasks)

    def in_flight(self) -> int:
        """Ledger entries that wait in a queue or that a worker holds."""
        with self._lock:
            return self.counts.ledger.in_flight()

    def learn_names(self, names: Mapping[str, str]) -> None:
        """Remember the names of tasks in flight ({uuid: name}, from the workers' inspect
        active/reserved replies): their later events carry none."""
        with self._lock:
            self.counts.learn_names(names)

    # -- the reading side --------------------------------------------------------------------

    def snapshot(self, now: float) -> Snapshot:
        """Copy what a scrape renders."""
        with self._lock:
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
        returns their hostnames. ``tick`` does this too."""
        with self._lock:
            return self._purge(now)

    def _purge(self, now: float) -> list[str]:
        """Forget workers long gone, then the task-sent series no worker holds that are as old
        (``Counts.expire_sent``), at most ``PURGE_SLICE`` workers, task names and series at a
        time (the next call goes on), so that the ingest thread pauses for a bounded purge
        whatever went away."""
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
                counts.caps.admitted[labels.WORKER],
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
        if budget > 0:  # task-sent series no worker holds, their clients silent for the delay
            counts.expire_sent(now, settings.purge_offline_worker_after, budget)
        return purged

    def queue_views(self, queues: Iterable[str] | None = None) -> QueueViews:
        """The ledger's views for the queue families: prefetched tasks per online worker and
        the oldest waiting task's arrival per queue (only ``queues``, if given)."""
        with self._lock:
            ledger = self.counts.ledger
            return QueueViews(ledger.prefetched(), ledger.oldest_waiting(queues))

    def waiting_queues(self) -> list[str]:
        """The queues that tasks were sent to and still wait in (for the queue poller)."""
        with self._lock:
            return self.counts.ledger.waiting_queues()

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


def _encoded_size(events: Sequence[Any]) -> int:
    """The size of a message's JSON when only its events are at hand (tests, direct calls)."""
    try:
        return len(orjson.dumps(events))
    except TypeError:  # not what JSON decodes to
        return 0
