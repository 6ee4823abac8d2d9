"""kombu's intake path: read Celery's event exchange through kombu, for any broker kombu speaks
(Redis, AMQP over TLS, filesystem...). An ``IntakePath`` for the reader's lifecycle
(``celery_events_exporter.intake.reader``).

The queue is declared exactly as Celery 5.7's own ``EventReceiver`` declares it, from the app's
event settings (``celery_events_exporter.intake.event_queue``), so broker policies written for
Flower or ``celery events`` apply unchanged. Messages are not decoded here: their raw bodies go
to the intake backlog. On Redis the path checks its pub/sub connection itself, by the rule of
``celery_events_exporter.intake.liveness``, as the Redis fast path does.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from kombu import Connection, Consumer
from kombu.message import Message

from celery_events_exporter.intake import compat
from celery_events_exporter.intake.liveness import (
    CHECK_EVERY,
    PING_TIMEOUT,
    PingWatch,
    frozen_message,
)
from celery_events_exporter.intake.message import INVALID_ENVELOPE, RawMessage
from celery_events_exporter.intake.reader import Connected, Subscription

UNDELIVERABLE = (KeyError, TypeError, ValueError, AttributeError)
"""What kombu raises from its delivery of a malformed message; its connection and channel
errors are none of these."""

MAX_UNDELIVERABLE_IN_A_ROW = 1_000
"""Malformed messages in a row, none delivered between them, past which the connection is
taken for broken and made again."""

SUBSCRIBE_POLL = 0.05
"""Seconds one drain waits while the reader waits for Redis to confirm its subscription: the
PSUBSCRIBE goes out in the first drain, the PING after it in the next."""

DRAIN_TIMEOUT = 0.5
"""Seconds one drain waits for a message: a quiet connection's heartbeat is checked this often."""
HEARTBEAT_TICK = 0.5
"""Seconds between heartbeat checks on kombu's path. py-amqp notes what it received at each check
and fails the connection at the first check more than two intervals after the check that saw the
last frame: at one check a second a frozen RabbitMQ took 10 s to notice, at two 8.5-9 s."""


class KombuPath:
    """kombu's ``Consumer`` on the event queue; for every broker without a fast path."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self._received = 0
        self._undeliverable_in_a_row = 0

    def close(self, conn: Connection) -> None:
        conn.release()

    def consume(self, conn: Connection, stop: threading.Event, connected: Connected) -> None:
        buffer_amqp_reads(conn)
        channel = conn.channel()
        consumer = Consumer(
            channel,
            queues=[self.subscription.event_queue(conn)],
            on_message=self._on_message,
            no_ack=True,
            accept=["application/json"],
        )
        with consumer:
            if conn.transport.driver_type == "redis":
                self._drain_redis(stop, conn, channel, connected)
            else:
                connected(queue=self.subscription.queue_name)
                self._drain(stop, conn)

    def _drain(self, stop: threading.Event, conn: Connection) -> None:
        """AMQP and the rest: a dead or frozen broker is the transport's to notice (py-amqp
        raises once two heartbeats are missed). The heartbeat is ticked every
        ``HEARTBEAT_TICK`` whether messages flow or not: while events arrive more often than
        ``DRAIN_TIMEOUT`` no drain times out, and a tick only on a timeout sent RabbitMQ no
        heartbeat at all, so it closed the connection as dead after two missed ones."""
        monotonic = time.monotonic
        ticked = monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):  # a quiet spell: tick all the same
                self._drain_events(conn, DRAIN_TIMEOUT)
            now = monotonic()
            if now - ticked >= HEARTBEAT_TICK:
                ticked = now
                conn.heartbeat_check()

    def _drain_redis(
        self, stop: threading.Event, conn: Connection, channel: Any, connected: Connected
    ) -> None:
        """Redis: kombu checks a pub/sub connection only from an event loop, which this reader
        has not, so the reader PINGs a quiet one itself
        (``celery_events_exporter.intake.liveness``)."""
        bounded = _BoundedReads(channel)
        try:
            self._await_subscription(stop, conn, channel, bounded)
            connected(queue=self.subscription.queue_name)
            watch = PingWatch(
                lambda: compat.redis_pubsub_ping(channel),
                lambda: compat.redis_pubsub_unanswered_pings(channel),
            )
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    self._drain_events(conn, CHECK_EVERY)
                watch.check(self._received)
                bounded.update()
        except Exception:
            # The connection is broken or its server does not answer: deleting the queue's
            # binding on close would fail too, on a frozen server only after redis-py's retries
            # of a 5 s timeout, with readiness still claiming a connection. Nothing is lost by
            # skipping it: the next connection declares the same queue (same name, same binding)
            # and kombu lets the bindings of an expiring queue lapse.
            compat.kombu_forget_auto_delete(channel)
            raise

    def _await_subscription(
        self, stop: threading.Event, conn: Connection, channel: Any, bounded: _BoundedReads
    ) -> None:
        """Return once Redis holds the subscription. kombu sends its PSUBSCRIBE from its first
        drain, after the consumer stands; a PING sent after it is answered after it (Redis
        answers a connection's commands in order), so the PONG proves that events published
        from then on reach this reader. Until then the path does not say connected, as the fast
        path waits for its last psubscribe confirmation: tasks sent the moment readiness turns
        green would otherwise have their events published to nobody."""
        pinged_at: float | None = None
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                self._drain_events(conn, SUBSCRIBE_POLL)
            bounded.update()
            if pinged_at is None:
                if compat.redis_pubsub_ping(channel):
                    pinged_at = time.monotonic()
            elif compat.redis_pubsub_unanswered_pings(channel) == 0:
                return
            elif time.monotonic() - pinged_at > PING_TIMEOUT:
                raise ConnectionError(frozen_message())

    def _drain_events(self, conn: Connection, timeout: float) -> None:
        """``conn.drain_events``, except that a message kombu cannot make a ``Message`` of (on
        Redis, a pub/sub payload that is JSON but no envelope: ``{}`` raises KeyError inside
        kombu's delivery, after the message was read whole) is counted as rejected and skipped,
        not taken for a broken connection. Many in a row with nothing delivered between them
        are taken for one after all."""
        try:
            conn.drain_events(timeout=timeout)
        except UNDELIVERABLE as exc:
            self._undeliverable_in_a_row += 1
            if self._undeliverable_in_a_row > MAX_UNDELIVERABLE_IN_A_ROW:
                raise
            if self.subscription.on_reject is not None:
                self.subscription.on_reject(INVALID_ENVELOPE, f"{type(exc).__name__}: {exc}")

    def _on_message(self, message: Message) -> None:
        self._received += 1
        self._undeliverable_in_a_row = 0
        self.subscription.outbox.put(RawMessage(time.time(), message.content_type, message.body))


class _BoundedReads:
    """Applies ``bound_blocking_reads`` to the pub/sub socket of kombu's Redis ``channel`` once
    per socket: kombu makes it on its first drain and again after a reconnection of redis-py's."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._bounded: socket.socket | None = None

    def update(self) -> None:
        sock = compat.redis_pubsub_socket(self._channel)
        if sock is not None and sock is not self._bounded:
            bound_blocking_reads(sock, PING_TIMEOUT)
            self._bounded = sock


def bound_blocking_reads(sock: socket.socket, seconds: float) -> None:
    """Make a blocking read of ``sock`` fail after ``seconds`` without data (``SO_RCVTIMEO``).

    redis-py reads the rest of a pub/sub reply with no timeout at all (``sock.settimeout(None)``
    for the read): a server frozen halfway through sending a message would hold kombu's reader,
    and the PINGs of ``_drain_redis`` with it, until it thawed. The kernel's own timeout still
    applies to such a read; redis-py turns the failed read into a ConnectionError. Reads that
    wait for the next message do not block (kombu polls first), so a quiet subscription is
    never cut.
    """
    whole = int(seconds)
    timeval = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)


AMQP_READ_SIZE = 1 << 20


class BufferedRecv:
    """Stands in for py-amqp's ``sock.recv``: one system call takes everything the kernel holds
    (up to ``AMQP_READ_SIZE``), later calls are served from it.

    py-amqp asks for each frame's header and payload by exact size, so a busy event queue costs
    several ``recv`` calls per message, and each one gives the GIL away: with the ingest thread
    busy, the reader then waits up to a switch interval (5 ms) for it every time, the socket
    backs up and RabbitMQ's 5 s message TTL starts dropping events.
    """

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv
        self._buffer = memoryview(b"")
        self._offset = 0

    def __call__(self, n: int) -> bytes:
        if self._offset >= len(self._buffer):
            data = self._recv(max(n, AMQP_READ_SIZE))
            if not data:
                return data  # EOF: py-amqp raises on it
            self._buffer, self._offset = memoryview(data), 0
        start = self._offset
        self._offset = min(start + n, len(self._buffer))
        return bytes(self._buffer[start : self._offset])


def buffer_amqp_reads(conn: Connection) -> None:
    """Install ``BufferedRecv`` on a plain-TCP py-amqp connection; TLS and other transports keep
    their own reads."""
    if conn.transport.driver_type != "amqp":
        return
    transport: Any = getattr(conn.connection, "transport", None)
    if compat.is_py_amqp_tcp_transport(transport):
        compat.replace_py_amqp_recv(transport, BufferedRecv)
        # py-amqp sets the socket's timeout before every frame read and restores it after (two
        # system calls per frame) unless it already is the one asked for: make it so.
        transport.sock.settimeout(DRAIN_TIMEOUT)
