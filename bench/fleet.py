"""An emulated Celery fleet: W prefork workers running tasks of M names, emitting events exactly
as Celery 5 does, through Celery's own ``EventDispatcher``.

Each worker gets a dispatcher with ``buffer_group=["task"]`` and ``buffer_limit=24`` (what a
prefork worker configures), so task events leave as JSON lists with routing key ``task.multi``
and worker events one by one. The dispatchers publish into a capture instead of the broker; the
publisher then sends the captured messages through kombu at the pace a scenario asks for. The
fleet also keeps the exact counts it emitted, which the benchmark compares with the consumer's.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.events.dispatcher import EventDispatcher

BUFFER_LIMIT = 24
HEARTBEAT_FREQ = 2.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message a worker's dispatcher published: routing key, body (an event or a list of
    them) and headers, as handed to ``kombu.Producer.publish``."""

    routing_key: str
    body: Any
    headers: dict[str, Any]

    @property
    def events(self) -> int:
        return len(self.body) if isinstance(self.body, list) else 1


class _Capture:
    """Stands in for a dispatcher's producer: only ``publish`` is called (see Celery's
    ``EventDispatcher.publish`` docstring)."""

    def __init__(self, sink: list[Outgoing]) -> None:
        self.sink = sink

    def publish(self, body: Any, routing_key: str, headers: dict[str, Any], **_: Any) -> None:
        self.sink.append(Outgoing(routing_key, body, dict(headers)))


@dataclass
class Expected:
    """What the fleet emitted, in the exporter's terms."""

    events_by_type: Counter[str] = field(default_factory=Counter)
    tasks: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(event type, task name, worker hostname) -> count."""

    @property
    def task_events(self) -> int:
        return sum(n for t, n in self.events_by_type.items() if t.startswith("task-"))

    @property
    def total(self) -> int:
        return sum(self.events_by_type.values())


class Fleet:
    """``workers`` emulated workers sharing ``task_names`` task names.

    Task ``i`` runs on worker ``i % W`` under name ``(i // W) % M``, so W x M tasks touch every
    (task, worker) pair once: the high-cardinality case. Every ``fail_every``-th task fails.
    """

    def __init__(
        self, app: Celery, workers: int, task_names: int, fail_every: int = 50, tag: str = ""
    ) -> None:
        tag = tag or uuid.uuid4().hex[:6]
        self.hostnames = [f"celery@bench-{tag}-{n:04d}" for n in range(workers)]
        self.names = [f"bench.task_{n:04d}" for n in range(task_names)]
        self.fail_every = fail_every
        self.sink: list[Outgoing] = []
        self.expected = Expected()
        self._next_task = 0
        self._processed = [0] * workers
        self.dispatchers: list[EventDispatcher] = []
        with app.connection_for_write() as conn:
            for pid, hostname in enumerate(self.hostnames, start=10_000):
                dispatcher = app.events.Dispatcher(
                    conn,
                    hostname=hostname,
                    buffer_group=["task"],
                    buffer_limit=BUFFER_LIMIT,
                    enabled=True,
                )
                dispatcher.producer = _Capture(self.sink)
                dispatcher.pid = pid
                self.dispatchers.append(dispatcher)

    def take(self) -> list[Outgoing]:
        """The messages published since the last call."""
        out = self.sink[:]
        self.sink.clear()
        return out

    def worker_event(self, event_type: str) -> None:
        """``worker-online``, ``worker-heartbeat`` or ``worker-offline`` from every worker."""
        for index, dispatcher in enumerate(self.dispatchers):
            fields: dict[str, Any] = {"freq": HEARTBEAT_FREQ, "sw_ident": "py-celery",
                                      "sw_ver": "5.7.0", "sw_sys": "Linux"}  # fmt: skip
            if event_type == "worker-heartbeat":
                fields.update(active=0, processed=self._processed[index], loadavg=[0.5, 0.4, 0.3])
            dispatcher.send(event_type, **fields)
            self.expected.events_by_type[event_type] += 1

    def run_tasks(self, count: int) -> None:
        """Run ``count`` more tasks: received, started, then succeeded or failed."""
        workers, names = len(self.dispatchers), len(self.names)
        expected = self.expected
        for _ in range(count):
            i = self._next_task
            self._next_task += 1
            index = i % workers
            dispatcher = self.dispatchers[index]
            hostname = self.hostnames[index]
            name = self.names[(i // workers) % names]
            task_id = str(uuid.uuid4())
            dispatcher.send(
                "task-received", uuid=task_id, name=name, args="(1, 2)", kwargs="{}",
                root_id=task_id, parent_id=None, retries=0, eta=None, expires=None,
            )  # fmt: skip
            dispatcher.send("task-started", uuid=task_id)
            if self.fail_every and i % self.fail_every == self.fail_every - 1:
                final = "task-failed"
                dispatcher.send(
                    final, uuid=task_id, exception="ValueError('bench')",
                    traceback='Traceback (most recent call last):\nValueError: bench\n',
                )  # fmt: skip
            else:
                final = "task-succeeded"
                dispatcher.send(final, uuid=task_id, result="3", runtime=0.0123)
            self._processed[index] += 1
            for event_type in ("task-received", "task-started", final):
                expected.events_by_type[event_type] += 1
                expected.tasks[(event_type, name, hostname)] += 1

    def flush(self) -> None:
        """Publish what the workers still buffer (a worker flushes at the end of each loop)."""
        for dispatcher in self.dispatchers:
            dispatcher.flush()

    def chunks(self, tasks: int, per_chunk: int) -> Iterator[list[Outgoing]]:
        """Run ``tasks`` tasks, yielding the published messages every ``per_chunk`` tasks."""
        done = 0
        while done < tasks:
            step = min(per_chunk, tasks - done)
            self.run_tasks(step)
            done += step
            if done == tasks:
                self.flush()
            yield self.take()
