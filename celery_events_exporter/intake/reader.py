"""One reader lifecycle for every intake path: connect, drain, notice a lost or frozen
connection, back off, reconnect, and report all of it.

What differs between brokers is plugged in as an ``IntakePath`` (kombu's path, the Redis and the
AMQP fast paths): given a connection, it subscribes, calls ``connected`` once events flow, and
drains until ``stop`` is set or the connection fails. Everything else is here, once: the kombu
``Connection`` (every URL of a failover list tried in turn at each attempt; Sentinel asked for
the master's address at each one, so a failover is followed), the backoff, the broker status
that readiness and the metrics read, the log lines (URLs masked), and the naming of the error
(a TLS mismatch named as one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kombu import Connection, Queue

from celery_events_exporter.broker_errors import ERROR_REASONS, error_reason, tls_mismatch
from celery_events_exporter.broker_options import (
    EXPORTER_ONLY_OPTIONS,
    broker_connection,
    connection_address,
    connection_attempts,
    mask_url,
)
from celery_events_exporter.intake.backlog import Outbox
from celery_events_exporter.intake.backoff import Backoff
from celery_events_exporter.intake.event_queue import (
    DEFAULT_EVENT_SETTINGS,
    EventSettings,
    event_queue,
    event_queue_name,
)
from celery_events_exporter.intake.liveness import SOCKET_TIMEOUT
from celery_events_exporter.intake.status import BrokerStatus
from celery_events_exporter.logging import get_logger

CONNECT_TIMEOUT = 5.0
AMQP_HEARTBEAT = 4.0
"""Seconds between AMQP heartbeats asked of the broker: a connection silent for two of them is
dead, so a frozen RabbitMQ is noticed within ~8 s (py-amqp's and the fast path's rule)."""
REDIS_TIMEOUTS = {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT}
"""Transport options every Redis reader gets unless the user sets them: redis-py waits forever
by default, so a frozen server would hold a connection attempt, or the close of a connection
given up on, until it thawed."""


RejectHook = Callable[[str, str], None]
"""(reason, detail) -> None: counts input rejected (``State.reject``)."""


@dataclass
class Subscription:
    """What every intake path is given: the broker and what to read from it, where messages go."""

    broker_url: str
    transport_options: dict[str, Any]
    """The user's transport options; the exporter's own are taken out."""
    outbox: Outbox
    events: EventSettings = DEFAULT_EVENT_SETTINGS
    on_reject: RejectHook | None = None
    """Told of each message the reader itself could not hand on (the state's ``reject``)."""
    queue_name: str = field(default="")
    """The event queue's name; a fresh one by default (``event_queue_name``)."""

    def __post_init__(self) -> None:
        self.transport_options = {
            k: v for k, v in self.transport_options.items() if k not in EXPORTER_ONLY_OPTIONS
        }
        if not self.queue_name:
            self.queue_name = event_queue_name(self.events)

    def event_queue(self, conn: Connection) -> Queue:
        """The event queue, declared as Celery 5.7's own EventReceiver declares it."""
        return event_queue(conn, self.queue_name, self.events)


class Connected(Protocol):
    """Called by a path once its subscription stands: ``fields`` go to the "broker connected"
    log line (the queue, the topics, the heartbeat)."""

    def __call__(self, **fields: object) -> None: ...


class IntakePath(Protocol):
    """What one broker path does with a connection the lifecycle made."""

    subscription: Subscription

    def consume(self, conn: Connection, stop: threading.Event, connected: Connected) -> None:
        """Subscribe on the connected ``conn``, call ``connected`` once events flow, hand every
        message on until ``stop`` is set; raise when the connection is lost or frozen."""

    def close(self, conn: Connection) -> None:
        """Let ``conn`` go, after ``consume`` returned or raised."""


def is_redis_broker(broker_url: str) -> bool:
    """True if kombu reaches ``broker_url`` through its Redis transport (sentinel included)."""
    return bool(Connection(broker_url).transport.driver_type == "redis")


def intake_connection(broker_url: str, transport_options: dict[str, Any]) -> Connection:
    """The connection every intake path reads from: bounded connection attempts, Redis socket
    timeouts (unless the user sets them), AMQP heartbeats."""
    options = transport_options
    if is_redis_broker(broker_url):
        options = {**REDIS_TIMEOUTS, **options}
    return broker_connection(
        broker_url, options, heartbeat=AMQP_HEARTBEAT, connect_timeout=CONNECT_TIMEOUT
    )


class TlsMismatch(Exception):
    """Ends a connection attempt early: the only URL is a TLS one against a plain server, and
    trying it again in the same attempt cannot help."""


class TlsMismatches:
    """The TLS mismatches of one connection attempt, over every URL of a failover list: kombu
    calls ``note`` (its ``errback``) when a URL failed and the next is tried, while ``conn``
    still names the failed one; only the last URL's error reaches ``named``."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.found: list[str] = []

    def note(self, exc: Exception, interval: float) -> None:
        mismatch = tls_mismatch(self.conn, exc)
        if mismatch is None:
            return
        self.found.append(mismatch)
        if len(self.conn.alt) <= 1:  # kombu would try the same URL again, in vain
            raise TlsMismatch(mismatch) from exc

    def named(self, exc: Exception) -> str | None:
        """Every mismatch of the attempt that ended with ``exc``, or None if there was none."""
        if not isinstance(exc, TlsMismatch):
            mismatch = tls_mismatch(self.conn, exc)
            if mismatch is not None:
                self.found.append(mismatch)
        return "; ".join(dict.fromkeys(self.found)) or None


class Reader:
    """Runs one ``IntakePath`` on the reader thread (``run``) and keeps ``status`` true."""

    def __init__(self, path: IntakePath, status: BrokerStatus) -> None:
        self.path = path
        self.status = status
        # Logged under the path's module, as each path logged before: the logger says which
        # path ran.
        self._log = get_logger(type(path).__module__)
        # Every reason at 0 from the start, so that increase() sees the first failure.
        status.connection_errors = dict.fromkeys(ERROR_REASONS, 0)

    def safe_url(self) -> str:
        """The broker URL (every URL of a failover list) with its passwords masked, for logs."""
        return mask_url(self.path.subscription.broker_url)

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, reconnecting with capped, jittered exponential backoff
        that starts over after every successful connection."""
        backoff = Backoff()
        subscription = self.path.subscription
        while not stop.is_set():
            conn = intake_connection(subscription.broker_url, subscription.transport_options)
            tls = TlsMismatches(conn)
            try:
                try:
                    conn.ensure_connection(errback=tls.note, max_retries=connection_attempts(conn))
                    self.path.consume(conn, stop, self._connected)
                finally:
                    self.path.close(conn)
            except Exception as exc:
                # Whatever the transport raises (socket errors, redis/amqp connection errors,
                # channel errors), the answer is the same: report it, wait, reconnect.
                was_connected = self.status.connected
                self.status.connected = False
                if was_connected:
                    self.status.connections_lost += 1
                    backoff.reset()
                delay = backoff.next()
                mismatch = None if was_connected else tls.named(exc)
                self._failed(conn, exc, was_connected, delay, mismatch)
                stop.wait(delay)
        self.status.connected = False

    def _failed(
        self,
        conn: Connection,
        exc: Exception,
        was_connected: bool,
        delay: float,
        mismatch: str | None,
    ) -> None:
        """Count the failure by reason and log it, a TLS mismatch named as one."""
        reason = "tls" if mismatch is not None else error_reason(exc)
        errors = dict(self.status.connection_errors)
        errors[reason] = errors.get(reason, 0) + 1
        self.status.connection_errors = errors
        self._log.warning(
            "broker connection lost" if was_connected else "broker unreachable",
            broker=self.safe_url(),
            address=connection_address(conn),
            reason=reason,
            error=mask_url(mismatch or f"{type(exc).__name__}: {exc}"),
            retry_in_seconds=round(delay, 2),
        )

    def _connected(self, **fields: object) -> None:
        self.status.connected = True
        self.status.connected_event.set()
        self._log.info("broker connected", broker=self.safe_url(), **fields)
