"""Broadcasts to the workers: wake them up (so they announce themselves at once), turn their
task events on (so workers started without ``-E`` still send them), and ask their pool size
(heartbeats do not carry it).

A worker just heard of (its worker-online or first heartbeat) is greeted at once, not at the
next periodic broadcast: its task events are switched on (a broadcast with that destination),
its registered tasks' series are created at 0, and the names of the tasks it runs and holds
reserved are learnt (their later events carry none). The names are asked of every worker at
each (re)connection too: an exporter restarted with tasks in flight names their ends.

All go over the broker's control exchange, on a connection of their own: kombu connections are
not shared across threads. Every broker operation on it is bounded (``CONTROL_TIMEOUT``): a broker
that stops answering fails the broadcast within seconds, with a log line and a count, and the
next one tries again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from kombu import Connection

from celery_events_exporter.broker_errors import ERROR_REASONS, error_reason
from celery_events_exporter.broker_options import (
    EXPORTER_ONLY_OPTIONS,
    broker_connection,
    mask_url,
)
from celery_events_exporter.intake.status import BrokerStatus
from celery_events_exporter.logging import get_logger
from celery_events_exporter.state import State

log = get_logger(__name__)

INSPECT_TIMEOUT = 1.0
"""Seconds to collect inspect replies; a worker too busy to answer is asked again next time."""

STOP_CHECK = 0.2
"""Seconds between looks at the stop event while waiting for the next broadcast: a wait of a
whole broadcast interval would hold a SIGTERM up for that long."""


CONTROL_TIMEOUT = 3.0
"""Seconds one broker operation of the controller may take: a connection attempt, a write, the
answer to a command (a queue declaration, a Redis command). Their defaults are none for Redis
and py-amqp: a frozen broker (its kernel keeps the TCP connection open) held a broadcast, and
every greeting behind it, until the broker answered again."""

BOUNDED_OPTIONS = {
    "redis": ("socket_timeout", "socket_connect_timeout"),
    "amqp": ("connect_timeout", "read_timeout", "write_timeout"),
}
"""The transport options that bound each kind of broker's socket operations."""


def control_transport_options(broker_url: str, transport_options: dict[str, Any]) -> dict[str, Any]:
    """The transport options of the controller's connection: the user's, with every socket
    operation bounded by ``CONTROL_TIMEOUT`` (or the user's shorter value), and without the
    exporter's own options (py-amqp would be handed them as connection arguments)."""
    options = {k: v for k, v in transport_options.items() if k not in EXPORTER_ONLY_OPTIONS}
    driver = broker_connection(broker_url, options).transport.driver_type
    for name in BOUNDED_OPTIONS.get(driver, ()):
        given = options.get(name)  # a number if given (exporter.broker_options checks)
        if isinstance(given, int | float) and 0 < given < CONTROL_TIMEOUT:
            options[name] = float(given)
        else:
            options[name] = CONTROL_TIMEOUT
    return options


class BoundedConnection(Connection):  # type: ignore[misc]  # kombu is untyped here (pyproject)
    """kombu's Connection, except that ``ensure`` gives up at the first connection error.

    kombu's pidbox publishes every broadcast with ``retry=True`` and no retry policy, and
    ``ensure`` then reconnects for as long as the broker does not answer, holding the controller
    (and every greeting behind it) through a freeze. Each broadcast opens a connection of its
    own, so the next broadcast is the retry."""

    def ensure(
        self, obj: Any, fun: Any, errback: Any = None, max_retries: Any = None, **options: Any
    ) -> Any:
        return super().ensure(obj, fun, errback, 0, **options)


MAX_TASK_NAME = 200
"""Longest task name taken from an inspect reply (Celery's names are module paths)."""


def registered_tasks(replies: Any) -> dict[str, list[str]]:
    """{worker hostname: task names} from ``inspect().registered()``'s replies. Celery lists a
    name alone, or followed by `` [attr=value ...]`` when asked for attributes: the name is
    the first word."""
    found: dict[str, list[str]] = {}
    if not isinstance(replies, dict):
        return found
    for hostname, names in replies.items():
        if not isinstance(hostname, str) or not isinstance(names, list):
            continue
        found[hostname] = [
            name.split(" ", 1)[0]
            for name in names
            if isinstance(name, str) and name and len(name) <= MAX_TASK_NAME
        ]
    return found


def task_names(*replies: Any) -> dict[str, str]:
    """{task uuid: task name} from ``inspect().active()`` / ``reserved()`` / ``scheduled()``
    replies (each {hostname: [request info, ...]}; a scheduled entry holds its request info
    under "request"); entries without a usable id and name are left out."""
    found: dict[str, str] = {}
    for reply in replies:
        if not isinstance(reply, dict):
            continue
        for requests in reply.values():
            if not isinstance(requests, list):
                continue
            for request in requests:
                if not isinstance(request, dict):
                    continue
                if isinstance(request.get("request"), dict):  # scheduled: {eta, priority, request}
                    request = request["request"]
                uuid, name = request.get("id"), request.get("name")
                if (
                    isinstance(uuid, str)
                    and uuid
                    and len(uuid) <= MAX_TASK_NAME
                    and isinstance(name, str)
                    and name
                    and len(name) <= MAX_TASK_NAME
                ):
                    found[uuid] = name
    return found


def pool_sizes(replies: Any) -> dict[str, int]:
    """{worker hostname: max-concurrency} from ``inspect().stats()``'s replies; workers whose
    reply lacks a usable pool size are left out."""
    sizes: dict[str, int] = {}
    if not isinstance(replies, dict):
        return sizes
    for hostname, stats in replies.items():
        pool = stats.get("pool") if isinstance(stats, dict) else None
        size = pool.get("max-concurrency") if isinstance(pool, dict) else None
        if isinstance(hostname, str) and type(size) is int and size > 0:
            sizes[hostname] = size
    return sizes


SILENT_AFTER = 2
"""Broadcasts a worker must answer, with no event of it heard meanwhile, before it counts as
silent: the first may race the heartbeat that the wake-up broadcast asks for."""


class SilentWorkers:
    """Workers that answer control broadcasts but whose events never arrive.

    Control replies travel over the broker's pidbox exchange, events over the event exchange: a
    worker that answers ``inspect`` but whose heartbeats (sent every 2 s, with or without ``-E``)
    never reach the exporter publishes its events elsewhere. The usual cause is an app whose
    ``event_exchange`` differs from ``--event-exchange``; a worker run ``--without-heartbeat``
    looks the same.
    """

    def __init__(self) -> None:
        self._unheard: dict[str, int] = {}
        self.silent: list[str] = []

    def update(self, answered: set[str], heard: set[str]) -> bool:
        """Note one broadcast's repliers and which of them were ever heard; True when the set
        of silent workers changed."""
        self._unheard = {
            host: self._unheard.get(host, 0) + 1 for host in answered if host not in heard
        }
        silent = sorted(host for host, count in self._unheard.items() if count >= SILENT_AFTER)
        changed = silent != self.silent
        self.silent = silent
        return changed


class Controller:
    def __init__(
        self,
        broker_url: str,
        transport_options: dict[str, Any],
        status: BrokerStatus,
        state: State,
        *,
        enable_events: bool,
        inspect_workers: bool,
        interval: float,
        on_active_queues: Callable[[Any], None] | None = None,
        event_exchange: str = "celeryev",
        worker_joined: threading.Event | None = None,
        on_task_names: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        self.app = Celery("celery-events-exporter", broker=broker_url, set_as_current=False)
        self.app.conf.broker_transport_options = control_transport_options(
            broker_url, transport_options
        )
        self.app.conf.broker_connection_timeout = CONTROL_TIMEOUT
        self.app.conf.broker_connection_retry_on_startup = False
        self.app.amqp.Connection = BoundedConnection
        # Publish on each broadcast's own connection, not on connections kept in kombu's
        # process-wide producer pool: a failed broadcast leaves nothing half-broken behind.
        self.app.control.mailbox.producer_pool = None
        self.status = status
        # Every reason at 0 from the start, so that increase() sees the first failure.
        status.broadcast_errors = dict.fromkeys(ERROR_REASONS, 0)
        self.state = state
        self.enable_events = enable_events
        self.inspect_workers = inspect_workers
        self.interval = interval
        self.on_active_queues = on_active_queues
        """Given each ``inspect active_queues`` reply: the queue poller watches those queues."""
        self.event_exchange = event_exchange
        self.silent_workers = SilentWorkers()
        self.worker_joined = worker_joined
        """Set when a worker-online event arrives: broadcast at once, so that a new worker gets
        enable_events and its consumed queues are known without waiting for the interval."""
        self.on_task_names = on_task_names
        """Given {uuid: name} of tasks in flight: the recent-task store names their rows."""

    def run(self, stop: threading.Event) -> None:
        connected = self.status.connected_event
        due = time.monotonic() + self.interval
        while not stop.is_set():
            # Broadcast right after each (re)connection, then every interval: workers that start
            # later need enable_events too, and a broadcast sent while they were down is lost.
            reconnected = connected.wait(min(STOP_CHECK, max(0.0, due - time.monotonic())))
            if stop.is_set():
                return
            if self.status.connected:
                new = self.state.new_workers()
                if new:  # first: the greeting is the quickest way to their task events
                    self.greet(new, stop)
            joined = self.worker_joined is not None and self.worker_joined.is_set()
            if not reconnected and not joined and time.monotonic() < due:
                continue
            if joined and self.worker_joined is not None:
                self.worker_joined.clear()
            due = time.monotonic() + self.interval
            if not self.status.connected:
                continue
            connected.clear()
            self.broadcast(wake_up=reconnected)

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A connection for one broadcast or greeting, closed after it; after a failure it is
        dropped without a word to the broker, whose answers to a close (channel, then
        connection) would take two more timeouts from a frozen one."""
        conn = self.app.connection_for_write()
        try:
            yield conn
        except BaseException:
            conn.collect()
            raise
        conn.release()

    def greet(self, hosts: list[str], stop: threading.Event) -> None:
        """Switch task events on in workers just heard of, create their registered tasks'
        series at 0 and learn the names of the tasks they hold; each step only to them."""
        try:
            with self._connection() as conn:
                if self.enable_events:
                    replies = self.app.control.enable_events(
                        destination=hosts, connection=conn, reply=True, timeout=INSPECT_TIMEOUT
                    )
                    answered = sorted(
                        host for reply in replies or [] if isinstance(reply, dict) for host in reply
                    )
                    log.info(
                        "task events switched on in new workers",
                        workers=",".join(hosts[:10]),
                        answered=",".join(answered[:10]),
                    )
                if not self.inspect_workers or stop.is_set():
                    return
                inspector = self.app.control.inspect(
                    destination=hosts, timeout=INSPECT_TIMEOUT, connection=conn
                )
                registered = registered_tasks(inspector.registered())
                for hostname, names in registered.items():
                    left_out = self.state.seed_tasks(hostname, names)
                    if left_out:
                        log.warning(
                            "more registered tasks than --max-registered-tasks: the rest get "
                            "their series at their first event",
                            worker=hostname[:200],
                            left_out=left_out,
                        )
                if not stop.is_set():
                    self._learn_names(inspector)
        except Exception as exc:
            self._failed("greeting new workers failed", exc, workers=",".join(hosts[:10]))

    def _learn_names(self, inspector: Any) -> None:
        # safe: the arguments as reprs, never unpickled objects (they are not kept anyway).
        # Tasks with an ETA or countdown wait in the worker's timer, in neither active nor
        # reserved until they are due: only scheduled names them.
        names = task_names(
            inspector.active(safe=True), inspector.reserved(safe=True), inspector.scheduled()
        )
        if not names:
            return
        self.state.learn_names(names)
        if self.on_task_names is not None:
            self.on_task_names(names)

    def broadcast(self, *, wake_up: bool) -> None:
        try:
            with self._connection() as conn:
                if self.enable_events:
                    self.app.control.enable_events(connection=conn)
                if wake_up:
                    self.app.control.broadcast("heartbeat", connection=conn)
                if self.inspect_workers:
                    inspector = self.app.control.inspect(timeout=INSPECT_TIMEOUT, connection=conn)
                    if wake_up:
                        # First: an exporter (re)started with tasks in flight needs their names
                        # before their ends arrive.
                        self._learn_names(inspector)
                    replies = inspector.stats()
                    self.state.set_concurrency(pool_sizes(replies))
                    answered = {h for h in replies or {} if isinstance(h, str)}
                    self._note_silent(answered, self.state.heard_workers())
                if self.on_active_queues is not None:
                    inspector = self.app.control.inspect(timeout=INSPECT_TIMEOUT, connection=conn)
                    self.on_active_queues(inspector.active_queues())
        except Exception as exc:
            self._failed("broadcast to workers failed", exc)

    def _failed(self, message: str, exc: Exception, **fields: str) -> None:
        """Log a failed broadcast or greeting and count it; the controller carries on (the next
        broadcast tries again)."""
        reason = error_reason(exc)
        errors = dict(self.status.broadcast_errors)
        errors[reason] = errors.get(reason, 0) + 1
        self.status.broadcast_errors = errors
        error = mask_url(f"{type(exc).__name__}: {exc}")  # a transport's message may quote a URL
        log.warning(message, reason=reason, error=error, **fields)

    def _note_silent(self, answered: set[str], heard: set[str]) -> None:
        if not self.silent_workers.update(answered, heard):
            return
        silent = self.silent_workers.silent
        self.status.silent_workers = len(silent)
        if silent:
            log.warning(
                "workers answer control broadcasts but none of their events arrive: does the "
                "app set another event_exchange?",
                workers=",".join(silent[:10]),
                silent_workers=len(silent),
                event_exchange=self.event_exchange,
            )
        else:
            log.info("every worker that answers control broadcasts is heard on the event exchange")
