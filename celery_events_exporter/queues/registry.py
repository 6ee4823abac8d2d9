"""Which queues to watch: named on the command line, seen in task-sent events, consumed by the
workers (their ``inspect active_queues`` replies), bound in the broker (kombu's Redis bindings).

Queue names come from the outside (any client may send a task to any queue name), so the set is
capped: names past ``limit`` are refused and counted. Names from the command line are always
watched, cap or not: the operator asked for them. A watched queue that no worker consumes and
that held nothing for ``IDLE_POLLS`` polls in a row gives its place to a name refused earlier or
seen now (``QueueRegistry.note_readings``): 10 000 crafted names in task-sent events cannot keep
a real queue seen later from being watched.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from celery_events_exporter.logging import get_logger, sparse
from celery_events_exporter.queues.reading import QueueReading

log = get_logger(__name__)

MAX_QUEUE_NAME_LENGTH = 1024
"""Longer names are refused (and counted as dropped): no real queue is named like that, and label
values of unbounded size would bloat every scrape."""

EVENT_QUEUE_PREFIX = "celeryev."
"""Celery's event receivers' queues (the exporter's own among them): not task queues."""

MAX_WORKERS = 10_000
"""Workers whose consumed queues are remembered; the longest silent are forgotten first (pods
come and go, and each leaves a hostname behind)."""

IDLE_POLLS = 3
"""Polls in a row a watched queue must be empty (no message ready or unacknowledged, no
consumer) and consumed by no worker before a new name may take its place."""

CONTROL_QUEUE_SUFFIX = ".pidbox"
"""Celery's remote-control queues (``celery@host.celery.pidbox``, ``*.reply.celery.pidbox``)."""

DELAYED_DELIVERY_QUEUE = re.compile(r"celery_delayed_\d+")
"""Celery 5.5+'s native delayed delivery on RabbitMQ quorum queues parks ETA and countdown tasks
in ``celery_delayed_0`` ... ``celery_delayed_27`` until they are due: not backlog, so never
discovered (``--queue`` still watches one on purpose)."""


def is_task_queue(name: str) -> bool:
    """False for Celery's own event, control and delayed-delivery queues: their messages are not
    tasks waiting for a worker."""
    return (
        not name.startswith(EVENT_QUEUE_PREFIX)
        and not name.endswith(CONTROL_QUEUE_SUFFIX)
        and DELAYED_DELIVERY_QUEUE.fullmatch(name) is None
    )


def consumed_queues(replies: Any) -> dict[str, list[str]]:
    """{worker hostname: queue names} from ``inspect().active_queues()``'s replies; malformed
    entries are left out."""
    found: dict[str, list[str]] = {}
    if not isinstance(replies, dict):
        return found
    for hostname, queues in replies.items():
        if not isinstance(hostname, str) or not isinstance(queues, list):
            continue
        found[hostname] = [
            queue["name"]
            for queue in queues
            if isinstance(queue, dict) and isinstance(queue.get("name"), str) and queue["name"]
        ]
    return found


class QueueRegistry:
    """The watched queue names and each worker's consumed queues; safe to use from any thread."""

    def __init__(self, named: Iterable[str] = (), limit: int = 500) -> None:
        self.named = dict.fromkeys(name for name in named if name)
        """Queues from the command line, in their order; always watched."""
        self.limit = limit
        self._lock = threading.Lock()
        self._discovered: dict[str, None] = {}
        self._refused: dict[str, None] = {}
        """The latest names refused at the cap (at most ``limit``), oldest first: they take the
        places of idle queues at the next polls, the newest first."""
        self._too_long: set[str] = set()
        """Names refused for their length (at most ``limit``), counted once each."""
        self.dropped = 0
        """Distinct queue names refused at the cap (or for their length), since the start."""
        self.evicted = 0
        """Watched queues that gave their place, idle, to another name, since the start."""
        self._idle: dict[str, int] = {}
        """Discovered queue -> polls in a row it held nothing (absent: not polled yet)."""
        self._worker_queues: dict[str, frozenset[str]] = {}

    def add(self, names: Iterable[str]) -> None:
        """Watch ``names`` (from events, workers or the broker) while the cap allows."""
        with self._lock:
            for name in names:
                if name in self._discovered or name in self.named or not name:
                    continue
                if not is_task_queue(name):
                    continue
                if name in self._refused or name in self._too_long:
                    continue
                if len(name) > MAX_QUEUE_NAME_LENGTH:
                    if len(self._too_long) < self.limit:
                        self._too_long.add(name)
                    self.dropped += 1
                    continue
                if len(self._discovered) + len(self.named) >= self.limit:
                    if self._evict_one():
                        self._discovered[name] = None
                        continue
                    # Remember refused names (bounded too) so that one name sent a million
                    # times counts once: the counter says how many queues go unwatched. The
                    # newest are kept: they take the places of idle queues first (a flood of
                    # names must not keep out a queue seen after it).
                    self._refused[name] = None
                    if len(self._refused) > self.limit:
                        del self._refused[next(iter(self._refused))]
                    self.dropped += 1
                    continue
                self._discovered[name] = None

    def note_readings(self, readings: Mapping[str, QueueReading]) -> None:
        """Count, after a poll, the polls in a row each watched queue held nothing; then give
        the places of idle ones to names refused earlier, oldest first."""
        with self._lock:
            for name in self._discovered:
                reading = readings.get(name)
                if reading is None:
                    continue
                busy = reading.length or reading.unacked or reading.consumers
                self._idle[name] = 0 if busy else self._idle.get(name, 0) + 1
            while self._refused and self._evict_one():
                name = next(reversed(self._refused))
                del self._refused[name]
                self._discovered[name] = None

    def _evict_one(self) -> bool:
        """Forget the watched queue idle longest, if one has been idle for ``IDLE_POLLS`` and
        no worker consumes it; call with the lock held."""
        consumed: set[str] = set().union(*self._worker_queues.values())
        victim, longest = None, IDLE_POLLS - 1
        for name, idle in self._idle.items():
            if idle > longest and name not in consumed and name in self._discovered:
                victim, longest = name, idle
        if victim is None:
            return False
        del self._discovered[victim]
        del self._idle[victim]
        self.evicted += 1
        if sparse(self.evicted):
            log.info(
                "an idle queue gave its place under --max-queues to another",
                queue=victim[:200],
                idle_polls=longest,
                evicted_total=self.evicted,
            )
        return True

    def take_replies(self, replies: Any) -> None:
        """The workers' ``inspect active_queues`` replies, as the controller hands them over."""
        self.set_worker_queues(consumed_queues(replies))

    def set_worker_queues(self, replies: Mapping[str, Iterable[str]]) -> None:
        """Record which queues each worker consumes (``inspect active_queues``) and watch them."""
        names: list[str] = []
        with self._lock:
            known = self._worker_queues
            for worker, queues in replies.items():
                consumed = frozenset(queues)
                known.pop(worker, None)  # the young end: it just answered
                known[worker] = consumed
                names.extend(sorted(consumed))
            while len(known) > MAX_WORKERS:
                del known[next(iter(known))]
        self.add(names)

    def worker_queues(self) -> dict[str, frozenset[str]]:
        """{worker hostname: queues it consumed at its last active_queues reply}."""
        with self._lock:
            return dict(self._worker_queues)

    def forget_worker(self, worker: str) -> None:
        with self._lock:
            self._worker_queues.pop(worker, None)

    def names(self) -> list[str]:
        """Every watched queue, command-line ones first."""
        with self._lock:
            return [*self.named, *(n for n in self._discovered if n not in self.named)]

    def __len__(self) -> int:
        with self._lock:
            return len(self.named) + len(self._discovered)
