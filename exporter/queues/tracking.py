"""What only task events can tell about queues and workers: which tasks were sent and not received
yet (the oldest one's age, per queue), which a worker received and has not started (prefetched),
and which a worker started and never finished before it vanished (orphaned).

``TaskTracking`` is handed each message's decoded events by the state (its ``task_tracker`` hook,
on the ingest thread), keeps a few dicts keyed by task uuid, and is read at scrape time. It has a
lock of its own: the ingest thread, the scrapes and the queue poller (which corrects the sent and
not received tasks with what the broker says is still waiting) each hold it briefly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from exporter.queues.reading import QueueReading
from exporter.queues.registry import QueueRegistry

UNKNOWN_TASK = "unknown"
"""The task label of an orphaned task whose task-received the exporter never saw."""

ORPHANED_EVENT = "task-orphaned"
"""The event the exporter itself makes for the recent-task store when it counts a task orphaned
(the Tasks view shows it as state LOST); never sent by Celery."""

_ENDS = frozenset(
    {"task-succeeded", "task-failed", "task-retried", "task-rejected", "task-revoked"}
)

OrphanObserver = Callable[[bytes, float, int], None]
"""The recent-task store's ``keep``: (JSON body of the made-up events, when, how many)."""


@dataclass(frozen=True)
class TrackingSnapshot:
    prefetched: dict[str, int]
    """Online worker -> tasks received and not started."""
    orphaned: dict[tuple[str, str], int]
    """(task, worker) -> tasks counted orphaned; worker is "" without the worker label."""
    oldest_sent: dict[str, float]
    """Watched queue -> when the exporter received the task-sent of its oldest waiting task."""


class TaskTracking:
    """Per-task bookkeeping for prefetched, orphaned and oldest-waiting; see the module doc."""

    def __init__(
        self,
        registry: QueueRegistry,
        *,
        max_tasks: int,
        worker_label: bool = True,
        on_orphaned: OrphanObserver | None = None,
    ) -> None:
        self.registry = registry
        self.max_tasks = max_tasks
        self.worker_label = worker_label
        self.on_orphaned = on_orphaned
        self._lock = threading.Lock()
        self._waiting: dict[str, dict[str, float]] = {}
        """queue -> {uuid: when its task-sent arrived}, oldest first: sent and not received."""
        self._waiting_in: dict[str, str] = {}
        """uuid -> its queue in ``_waiting``, oldest first (the bound evicts from here)."""
        self._reserved: dict[str, dict[str, str]] = {}
        """worker -> {uuid: task name}: received and not started."""
        self._running: dict[str, dict[str, str]] = {}
        """worker -> {uuid: task name}: started and not finished."""
        self._seen_online: set[str] = set()
        """Workers online at the last sweep: only they can be found gone without a goodbye."""
        self.orphaned: dict[tuple[str, str], int] = {}

    # -- the ingest side (the state's hook) --------------------------------------------------

    def __call__(self, events: Sequence[Any], received_at: float) -> None:
        """Follow one message's events; malformed ones are skipped (the state counts them).

        Runs on the ingest thread for every message, so the common path binds its dicts once
        per message and does a few dict operations per event."""
        with self._lock:
            waiting_in = self._waiting_in
            all_reserved = self._reserved
            all_running = self._running
            max_tasks = self.max_tasks
            for event in events:
                if type(event) is not dict:
                    continue
                event_type = event.get("type")
                uuid = event.get("uuid")
                hostname = event.get("hostname")
                if type(uuid) is not str or not uuid or type(hostname) is not str:
                    if event_type == "worker-offline":
                        self._goodbye(hostname)
                    continue
                if event_type == "task-sent":
                    self._sent(uuid, event.get("queue"), received_at)
                    continue
                if waiting_in and uuid in waiting_in:  # news from a worker: no longer waiting
                    self._forget_waiting(uuid)
                if event_type == "task-received":
                    name = event.get("name")
                    reserved = all_reserved.get(hostname)
                    if reserved is None:
                        reserved = all_reserved[hostname] = {}
                    reserved[uuid] = name if type(name) is str and name else UNKNOWN_TASK
                    if len(reserved) > max_tasks:
                        del reserved[next(iter(reserved))]
                elif event_type == "task-started":
                    reserved = all_reserved.get(hostname)
                    name = reserved.pop(uuid, UNKNOWN_TASK) if reserved else UNKNOWN_TASK
                    running = all_running.get(hostname)
                    if running is None:
                        running = all_running[hostname] = {}
                    running[uuid] = name
                    if len(running) > max_tasks:
                        del running[next(iter(running))]
                elif event_type in _ENDS:
                    running = all_running.get(hostname)
                    if running and running.pop(uuid, None) is not None:
                        continue
                    reserved = all_reserved.get(hostname)  # ended without starting (revoked)
                    if reserved:
                        reserved.pop(uuid, None)

    def _sent(self, uuid: str, queue: Any, received_at: float) -> None:
        if type(queue) is not str or not queue:
            return
        waiting_in = self._waiting_in
        if uuid in waiting_in:  # sent again (a retry) before it was received
            self._forget_waiting(uuid)
        waiting = self._waiting.get(queue)
        if waiting is None:
            waiting = self._waiting[queue] = {}
            self.registry.add((queue,))
        waiting[uuid] = received_at
        waiting_in[uuid] = queue
        if len(waiting_in) > self.max_tasks:
            self._forget_waiting(next(iter(waiting_in)))

    def _forget_waiting(self, uuid: str) -> None:
        queue = self._waiting_in.pop(uuid)
        waiting = self._waiting[queue]
        del waiting[uuid]
        if not waiting:
            del self._waiting[queue]

    def _goodbye(self, hostname: Any) -> None:
        """A clean stop: its prefetched tasks go back to the broker, its running ones finished."""
        if type(hostname) is str:
            self._reserved.pop(hostname, None)
            self._running.pop(hostname, None)
            self._seen_online.discard(hostname)

    # -- the poller side ---------------------------------------------------------------------

    def queues_read(self, readings: Mapping[str, QueueReading], started_at: float) -> None:
        """Forget sent tasks the broker says no longer wait: all those sent before a poll that
        found their queue empty, and on Redis those older than the oldest message of every
        list of the queue when the exporter knows each of those messages."""
        with self._lock:
            for queue, reading in readings.items():
                waiting = self._waiting.get(queue)
                if not waiting:
                    continue
                if reading.length == 0:
                    self._forget_sent_before(queue, started_at)
                elif reading.oldest_ids and all(
                    task_id is not None and task_id in waiting for task_id in reading.oldest_ids
                ):
                    oldest = min(waiting[task_id] for task_id in reading.oldest_ids if task_id)
                    self._forget_sent_before(queue, oldest)

    def _forget_sent_before(self, queue: str, moment: float) -> None:
        waiting = self._waiting[queue]
        stale = []
        for uuid, sent_at in waiting.items():
            if sent_at >= moment:
                break
            stale.append(uuid)
        for uuid in stale:
            self._forget_waiting(uuid)

    # -- the scrape side ---------------------------------------------------------------------

    def sweep(self, now: float, online: Iterable[str]) -> None:
        """Count the running tasks of workers that went offline without a goodbye since the
        last sweep as orphaned, and tell the recent-task store."""
        lost: list[dict[str, Any]] = []
        online = set(online)
        with self._lock:
            for hostname in self._seen_online - online:
                self._reserved.pop(hostname, None)  # the broker delivers them again
                for uuid, name in self._running.pop(hostname, {}).items():
                    key = (name, hostname if self.worker_label else "")
                    self.orphaned[key] = self.orphaned.get(key, 0) + 1
                    lost.append(
                        {
                            "type": ORPHANED_EVENT,
                            "uuid": uuid,
                            "hostname": hostname,
                            "timestamp": now,
                        }
                    )
            self._seen_online = online
        if lost and self.on_orphaned is not None:
            self.on_orphaned(orjson.dumps(lost), now, len(lost))

    def snapshot(self) -> TrackingSnapshot:
        watched = set(self.registry.names())
        with self._lock:
            return TrackingSnapshot(
                prefetched={host: len(self._reserved.get(host, ())) for host in self._seen_online},
                orphaned=dict(self.orphaned),
                oldest_sent={
                    queue: next(iter(waiting.values()))
                    for queue, waiting in self._waiting.items()
                    if queue in watched
                },
            )

    @property
    def tracked(self) -> int:
        """Task uuids held (waiting, prefetched, running), for the self-metric."""
        with self._lock:
            return (
                len(self._waiting_in)
                + sum(map(len, self._reserved.values()))
                + sum(map(len, self._running.values()))
            )
