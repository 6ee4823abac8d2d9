"""The task ledger: one entry per task the exporter follows, keyed by uuid, and its views.

The counting loop (``counting.Counts.count``) writes an entry once per task event, under the
state's lock, with the name and hostname it has already validated and cut; everything else here
reads the entries or does the rare work (a bound reached, a worker gone, a poll's correction):

- the entries: uuid -> ``[name, received, worker, state, queue, sent_at, attempt]`` (a list, made
  once per task and changed in place: an object per task cost more), oldest first, at most
  ``max_tracked_tasks``: the task's name (for its later events, which carry none), the worker's
  task-received timestamp (queue wait), the worker that received or started it (hostname cut
  as the worker records are), the last event type applied, the queue it waits in (sent and not
  yet heard of from a worker) with when its task-sent arrived (the exporter's clock), and how
  many times it was received (a retry is received again);
- ``waiting``: queue -> {uuid: sent_at} of the entries waiting, oldest first: the age of each
  queue's oldest waiting task, corrected by the queue poller's readings (``queues_read``);
- ``prefetched``: per online worker, its tasks received and not started;
- ``sweep``: the tasks a worker had started when it vanished without a goodbye (orphaned), found
  on the ingest thread's tick, not at a scrape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery_events_exporter.events.vocabulary import TASK_RECEIVED, TASK_STARTED

NAME, RECEIVED, WORKER, STATE, QUEUE, SENT_AT, ATTEMPT = range(7)
"""The fields of a ledger entry."""

Entry = list[Any]

MAX_DEPARTED = 1_000
"""Workers that said goodbye and whose tasks in flight are not forgotten yet, at most: past it,
the tasks of all of them are forgotten at once, in one pass."""


class Ledger:
    """The entries, the waiting index and the workers' comings and goings; see the module doc.
    Not thread-safe: ``State`` holds its lock around every call."""

    def __init__(self, max_tasks: int) -> None:
        self.max_tasks = max_tasks
        self.tasks: dict[str, Entry] = {}
        self.waiting: dict[str, dict[str, float]] = {}
        self.seen_online: set[str] = set()
        """Workers online at the last sweep: only they can be found gone without a goodbye."""
        self.departed: dict[str, None] = {}
        """Workers that said goodbye since the last sweep. Their tasks in flight are forgotten
        at the sweep, in one pass over the entries for all of them, or before the first task of
        their next start, whichever comes first."""

    # -- what the counting loop calls when it is not the common case ---------------------------

    def evict(self) -> None:
        """Drop the oldest entries while there are more than ``max_tasks``."""
        tasks = self.tasks
        while len(tasks) > self.max_tasks:
            uuid = next(iter(tasks))
            entry = tasks.pop(uuid)
            if entry[QUEUE] is not None:
                self._drop_waiting(uuid, entry[QUEUE])

    def unwait(self, uuid: str, entry: Entry) -> None:
        """A waiting task has news from a worker (or ended): it no longer waits."""
        queue = entry[QUEUE]
        entry[QUEUE] = None
        self._drop_waiting(uuid, queue)

    def _drop_waiting(self, uuid: str, queue: str) -> None:
        waiting = self.waiting[queue]
        waiting.pop(uuid, None)
        if not waiting:
            del self.waiting[queue]

    def wait(self, uuid: str, entry: Entry, queue: str, sent_at: float) -> None:
        """A task sent to ``queue`` at ``sent_at`` (the exporter's clock) waits there."""
        if entry[QUEUE] is not None:  # sent again (a retry) before any worker received it
            self.unwait(uuid, entry)
        entry[QUEUE] = queue
        entry[SENT_AT] = sent_at
        waiting = self.waiting.get(queue)
        if waiting is None:
            waiting = self.waiting[queue] = {}
        waiting[uuid] = sent_at

    def goodbye(self, host: str) -> None:
        """A clean stop: its prefetched tasks go back to the broker, its running ones finished;
        they are forgotten later, with other workers' (``departed``)."""
        self.seen_online.discard(host)
        departed = self.departed
        departed[host] = None
        if len(departed) > MAX_DEPARTED:
            self.forget_workers(set(departed))
            departed.clear()

    def back(self, host: str) -> None:
        """A worker that said goodbye receives a task again: its earlier tasks are forgotten
        first."""
        self.forget_workers({host})
        del self.departed[host]

    def forget_workers(self, hosts: set[str]) -> list[tuple[str, Entry]]:
        """Detach the tasks in flight of the workers ``hosts`` from them, in one pass; returns
        the started ones as (uuid, entry) with their worker still set in ``entry``'s copy."""
        started: list[tuple[str, Entry]] = []
        if not hosts:
            return started
        for uuid, entry in self.tasks.items():
            if entry[WORKER] in hosts:
                if entry[STATE] == TASK_STARTED:
                    started.append((uuid, entry.copy()))
                entry[WORKER] = None
        return started

    # -- the ingest thread's tick ---------------------------------------------------------------

    def sweep(self, online: set[str]) -> list[tuple[str, Entry]]:
        """The started tasks of workers online at the previous sweep and not now, which said no
        goodbye: (uuid, entry) of each, their worker in the entry. Forgets the tasks in flight
        of those and of the workers that said goodbye (the broker delivers the prefetched ones
        again)."""
        vanished = self.seen_online - online
        hosts = vanished | self.departed.keys()
        lost = [
            (uuid, entry) for uuid, entry in self.forget_workers(hosts) if entry[WORKER] in vanished
        ]
        self.departed.clear()
        self.seen_online = online
        return lost

    # -- the queue poller ------------------------------------------------------------------------

    def queues_read(self, readings: Mapping[str, Any], started_at: float) -> None:
        """Forget sent tasks the broker says no longer wait: all those sent before a poll that
        found their queue empty, and on Redis those older than the oldest message of every
        list of the queue when the exporter knows each of those messages."""
        for queue, reading in readings.items():
            waiting = self.waiting.get(queue)
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
        stale = []
        for uuid, sent_at in self.waiting[queue].items():
            if sent_at >= moment:
                break
            stale.append(uuid)
        tasks = self.tasks
        for uuid in stale:
            self.unwait(uuid, tasks[uuid])

    # -- the views -------------------------------------------------------------------------------

    def prefetched(self) -> dict[str, int]:
        """Online worker (as of the last sweep) -> its tasks received and not started."""
        counts = dict.fromkeys(self.seen_online, 0)
        if counts:
            for entry in self.tasks.values():
                if entry[STATE] == TASK_RECEIVED and entry[WORKER] in counts:
                    counts[entry[WORKER]] += 1
        return counts

    def oldest_waiting(self, queues: Iterable[str] | None = None) -> dict[str, float]:
        """Queue -> when the task-sent of its oldest waiting task arrived (the exporter's
        clock); only ``queues`` if given."""
        waiting = self.waiting
        if queues is None:
            return {queue: next(iter(tasks.values())) for queue, tasks in waiting.items()}
        return {queue: next(iter(waiting[queue].values())) for queue in queues if queue in waiting}

    def waiting_queues(self) -> list[str]:
        """The queues tasks were sent to and wait in."""
        return list(self.waiting)

    def in_flight(self) -> int:
        """Entries that wait in a queue or that a worker holds."""
        return sum(
            1
            for entry in self.tasks.values()
            if entry[QUEUE] is not None or entry[WORKER] is not None
        )


def new_entry(name: str, state: str | None) -> Entry:
    """An entry for a task first heard of now: only its name and state known."""
    return [name, None, None, state, None, None, 0]


__all__ = [
    "ATTEMPT",
    "MAX_DEPARTED",
    "NAME",
    "QUEUE",
    "RECEIVED",
    "SENT_AT",
    "STATE",
    "WORKER",
    "Entry",
    "Ledger",
    "new_entry",
]
