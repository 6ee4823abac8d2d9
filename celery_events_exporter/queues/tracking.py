"""What only task events can tell about queues and workers: which tasks were sent and not received
yet (the oldest one's age, per queue), which a worker received and has not started (prefetched),
and which a worker started and never finished before it vanished (orphaned).

``TaskTracking`` is handed each message's decoded events by the state (its ``task_tracker`` hook,
on the ingest thread), keeps a few dicts keyed by task uuid, and is read at scrape time. It has a
lock of its own: the ingest thread, the scrapes and the queue poller (which corrects the sent and
not received tasks with what the broker says is still waiting) each hold it briefly.

What it holds is bounded: ``max_tasks`` uuids (cut as ``validate`` cuts them), each with a
hostname and task name cut to the label-length cap as the state cuts them (so that they match
the state's worker names). The orphaned tasks it finds are counted by the state
(``State.count_orphaned``), where the task and worker labels are capped and a purged worker's
series go with its others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from celery_events_exporter.events.validate import MAX_UUID_LENGTH
from celery_events_exporter.events.vocabulary import (
    TASK_ORPHANED,
    TASK_RECEIVED,
    TASK_SENT,
    TASK_STARTED,
    TASK_STATE_EVENTS,
    WORKER_OFFLINE,
)
from celery_events_exporter.queues.reading import QueueReading
from celery_events_exporter.queues.registry import QueueRegistry
from celery_events_exporter.state.counting import UNKNOWN_TASK
from celery_events_exporter.state.labels import cut, fits

_ENDS = frozenset(TASK_STATE_EVENTS) - {TASK_RECEIVED, TASK_STARTED}
"""The task events after which a task is no longer in flight on its worker."""

OrphanObserver = Callable[[bytes, float, int], None]
"""The recent-task store's ``keep``: (JSON body of the made-up events, when, how many)."""

MAX_DEPARTED = 1_000
"""Workers that said goodbye and whose tasks in flight are not forgotten yet, at most: past it,
the tasks of all of them are forgotten at once, in one pass."""

OrphanCounter = Callable[[Sequence[tuple[str, str]]], None]
"""``State.count_orphaned``: (task name, worker hostname) of each task found orphaned."""


@dataclass(frozen=True)
class TrackingSnapshot:
    prefetched: dict[str, int]
    """Online worker -> tasks received and not started."""
    oldest_sent: dict[str, float]
    """Watched queue -> when the exporter received the task-sent of its oldest waiting task."""


class TaskTracking:
    """Per-task bookkeeping for prefetched, orphaned and oldest-waiting; see the module doc."""

    def __init__(
        self,
        registry: QueueRegistry,
        *,
        max_tasks: int,
        max_length: int,
        count_orphaned: OrphanCounter | None = None,
        on_orphaned: OrphanObserver | None = None,
    ) -> None:
        self.registry = registry
        self.max_tasks = max_tasks
        self.max_length = max_length
        """The label-length cap in bytes: hostnames and names are cut to it as the state cuts
        them; a queue name that does not fit is not followed: it could not be a label value."""
        self.count_orphaned = count_orphaned
        self.on_orphaned = on_orphaned
        self._lock = threading.Lock()
        self._waiting: dict[str, dict[str, float]] = {}
        """queue -> {uuid: when its task-sent arrived}, oldest first: sent and not received."""
        self._waiting_in: dict[str, str] = {}
        """uuid -> its queue in ``_waiting``, oldest first (the bound evicts from here)."""
        self._in_flight: dict[str, list[Any]] = {}
        """uuid -> [worker, task name, started?] of tasks received (or started) and not ended,
        oldest first: one flat dict, as every task passes through it (a dict per worker cost
        two more lookups per event)."""
        self._seen_online: set[str] = set()
        """Workers online at the last sweep: only they can be found gone without a goodbye."""
        self._departed: dict[str, None] = {}
        """Workers that said goodbye since the last sweep. Their tasks in flight are forgotten
        at the sweep, in one pass over the tasks for all of them (a pass per goodbye, with a
        fleet stopping, stalled the ingest thread), or before the first task of their next
        start, whichever comes first."""

    # -- the ingest side (the state's hook) --------------------------------------------------

    def __call__(self, events: Sequence[Any], received_at: float) -> None:
        """Follow one message's events; malformed ones are skipped (the state counts them).

        Runs on the ingest thread for every message: one dict operation per task event on the
        common path, the frequent types first."""
        with self._lock:
            waiting_in = self._waiting_in
            in_flight = self._in_flight
            max_tasks = self.max_tasks
            max_length = self.max_length
            departed = self._departed
            for event in events:
                if type(event) is not dict:
                    continue
                try:  # subscripts: a task event has both, and costs no method call
                    event_type = event["type"]
                    uuid = event["uuid"]
                except KeyError:
                    event_type = event.get("type")
                    uuid = None
                if type(uuid) is not str:
                    if event_type == WORKER_OFFLINE:
                        self._goodbye(event.get("hostname"))
                    continue
                if len(uuid) > MAX_UUID_LENGTH:  # as the state keys it
                    uuid = uuid[:MAX_UUID_LENGTH]
                if waiting_in and uuid in waiting_in and event_type != TASK_SENT:
                    self._forget_waiting(uuid)  # news from a worker: no longer waiting
                if event_type == TASK_STARTED:
                    entry = in_flight.get(uuid)
                    if entry is not None:
                        entry[2] = True
                    else:  # its task-received was missed
                        self._track_started(uuid, event.get("hostname"))
                elif event_type == TASK_RECEIVED:
                    hostname = event.get("hostname")
                    if type(hostname) is not str:
                        continue
                    hostname = cut(hostname, max_length)
                    if departed and hostname in departed:  # started again since its goodbye
                        self._forget_departed((hostname,))
                    name = event.get("name")
                    if type(name) is not str or not name:
                        name = UNKNOWN_TASK
                    else:
                        name = cut(name, max_length)
                    if uuid in in_flight:  # a retry is received again: the young end
                        del in_flight[uuid]
                    in_flight[uuid] = [hostname, name, False]
                    if len(in_flight) > max_tasks:
                        del in_flight[next(iter(in_flight))]
                elif event_type in _ENDS:
                    in_flight.pop(uuid, None)
                elif event_type == TASK_SENT:
                    self._sent(uuid, event.get("queue"), received_at)

    def _track_started(self, uuid: str, hostname: Any) -> None:
        """A task-started without its task-received (missed, or before the exporter started)."""
        if type(hostname) is not str:
            return
        hostname = cut(hostname, self.max_length)
        if hostname in self._departed:
            self._forget_departed((hostname,))
        in_flight = self._in_flight
        in_flight[uuid] = [hostname, UNKNOWN_TASK, True]
        if len(in_flight) > self.max_tasks:
            del in_flight[next(iter(in_flight))]

    def _sent(self, uuid: str, queue: Any, received_at: float) -> None:
        if type(queue) is not str or not queue or not fits(queue, self.max_length):
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
        """A clean stop: its prefetched tasks go back to the broker, its running ones finished;
        they are forgotten later, with other workers' (``_departed``)."""
        if type(hostname) is str:
            hostname = cut(hostname, self.max_length)
            self._seen_online.discard(hostname)
            departed = self._departed
            departed[hostname] = None
            if len(departed) > MAX_DEPARTED:
                self._forget_departed(list(departed))

    def _forget_departed(self, hosts: Iterable[str]) -> None:
        """Forget the tasks in flight of workers that said goodbye."""
        hosts = set(hosts)
        self._forget_workers(hosts)
        for hostname in hosts:
            del self._departed[hostname]

    def _forget_workers(self, hosts: set[str]) -> list[tuple[str, str, str]]:
        """Drop the tasks in flight of the workers ``hosts``, in one pass; returns the started
        ones as (uuid, task name, hostname)."""
        if not hosts:
            return []
        in_flight = self._in_flight
        theirs = [uuid for uuid, entry in in_flight.items() if entry[0] in hosts]
        started = []
        for uuid in theirs:
            hostname, name, was_started = in_flight.pop(uuid)
            if was_started:
                started.append((uuid, name, hostname))
        return started

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
        last sweep as orphaned (by the state), and tell the recent-task store; both after the
        lock is released, as the ingest thread takes the state's lock, then this one."""
        lost: list[dict[str, Any]] = []
        orphaned: list[tuple[str, str]] = []
        online = set(online)
        with self._lock:
            vanished = self._seen_online - online
            departed = self._departed
            # Their prefetched tasks are dropped too: the broker delivers them again.
            for uuid, name, hostname in self._forget_workers(vanished | departed.keys()):
                if hostname in vanished:
                    orphaned.append((name, hostname))
                    lost.append(
                        {
                            "type": TASK_ORPHANED,
                            "uuid": uuid,
                            "hostname": hostname,
                            "timestamp": now,
                        }
                    )
            departed.clear()
            self._seen_online = online
        if orphaned and self.count_orphaned is not None:
            self.count_orphaned(orphaned)
        if lost and self.on_orphaned is not None:
            self.on_orphaned(orjson.dumps(lost), now, len(lost))

    def snapshot(self) -> TrackingSnapshot:
        watched = set(self.registry.names())
        with self._lock:
            return TrackingSnapshot(
                prefetched=self._prefetched(),
                oldest_sent={
                    queue: next(iter(waiting.values()))
                    for queue, waiting in self._waiting.items()
                    if queue in watched
                },
            )

    def _prefetched(self) -> dict[str, int]:
        """Online worker -> its tasks received and not started; call with ``_lock`` held."""
        counts = dict.fromkeys(self._seen_online, 0)
        for hostname, _, started in self._in_flight.values():
            if not started and hostname in counts:
                counts[hostname] += 1
        return counts

    @property
    def tracked(self) -> int:
        """Task uuids held (waiting, received or running), for the self-metric."""
        with self._lock:
            return len(self._waiting_in) + len(self._in_flight)
