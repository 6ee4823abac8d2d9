"""A fast path for Redis: read Celery's event pub/sub stream straight off the socket.

kombu's Redis transport does a lot per message that the exporter does not need (redis-py's
response handling, a stdlib JSON decode of the envelope, a ``Message`` object, callbacks) and
does it on the thread that must keep the socket drained. Here the reader thread only moves bytes:
it receives up to ``READ_SIZE`` bytes at a time, splits them into pub/sub replies with hiredis
(C) and queues each message's raw payload, kombu's envelope, for the ingest thread to open.

What is subscribed is what kombu itself would subscribe: the topics come from kombu's own Redis
``Channel`` for this URL and these transport options (``fanout_prefix``, ``fanout_patterns``,
``global_keyprefix``, the database number, sentinel's legacy topic), and the connection comes
from that channel's redis-py pool (password, TLS, sentinel, socket options), so the fast path
sees exactly the events kombu would deliver. Through Sentinel, that pool asks the sentinels for
the master's address at every connection, so the reader follows a failover when it reconnects. A
quiet connection is PINGed (``celery_events_exporter.intake.liveness``). An ``IntakePath`` for
``celery_events_exporter.intake.reader``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import hiredis
from kombu import Connection

from celery_events_exporter.broker_options import is_sentinel
from celery_events_exporter.intake import compat
from celery_events_exporter.intake.event_queue import DEFAULT_EVENT_EXCHANGE
from celery_events_exporter.intake.liveness import (
    CHECK_EVERY,
    PING_AFTER,
    PING_TIMEOUT,
    Liveness,
    frozen_message,
)
from celery_events_exporter.intake.message import RawMessage
from celery_events_exporter.intake.reader import Connected, Subscription

READ_SIZE = 4 << 20
"""Bytes taken per socket read: while the ingest thread holds the GIL the reader waits for it,
so each turn must take everything the kernel has buffered (a 200 k-event burst is ~77 MB)."""

FEED_SIZE = 64 << 10
"""Bytes handed to hiredis at a time: its reader moves the unread rest of its buffer to the front
after every reply, so a whole read fed at once would cost quadratic time."""

REDIS_TRANSPORTS = frozenset({"redis", "rediss", "sentinel"})


def subscribe_topics(channel: Any, exchange: str = DEFAULT_EVENT_EXCHANGE) -> list[str]:
    """The pub/sub patterns kombu's Redis ``channel`` PSUBSCRIBEs for a queue bound to the fanout
    ``exchange`` with routing key ``#``, global key prefix included (kombu's own rule)."""
    return compat.redis_subscribe_topics(channel, exchange)


BUSY_WITHIN = 1.0
"""A close that follows data by less than this many seconds came while the stream was busy."""


def closed_by_server(quiet_for: float, *, sentinel: bool = False) -> str:
    """What the exporter knows when Redis closes a subscriber's connection: amid a busy stream
    the likely cause is Redis' ``client-output-buffer-limit pubsub`` (the exporter read too
    slowly, everything Redis held for it is lost); after a quiet spell, a restart, a
    ``CLIENT KILL`` or the server's ``timeout``. Through Sentinel, a failover is as likely:
    Sentinel kills the clients of a master it demotes (the master is asked for again)."""
    if quiet_for < BUSY_WITHIN:
        text = (
            "connection closed by the server amid a busy stream: Redis' client-output-buffer-limit "
            "for pubsub was probably exceeded (the exporter read too slowly, or was paused); the "
            "events Redis held for it are lost"
        )
    else:
        text = f"connection closed by the server after {quiet_for:.1f} s without data"
    if sentinel:
        text += (
            "; or a Sentinel failover demoted or stopped this server (the master is asked for "
            "again)"
        )
    return text


def is_redis_url(connection: Connection) -> bool:
    return connection.transport.driver_type == "redis" and (
        connection.transport_cls in REDIS_TRANSPORTS
    )


PING = b"*1\r\n$4\r\nPING\r\n"


def _ping(sock: socket.socket) -> bool:
    sock.sendall(PING)  # its answer is read with the messages: any byte answers it
    return True


class RedisPubSubPath:
    """PSUBSCRIBE on a connection of kombu's channel's pool, read with hiredis."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self._sentinel = is_sentinel(subscription.broker_url)

    def consume(self, conn: Connection, stop: threading.Event, connected: Connected) -> None:
        channel: Any = conn.default_channel
        topics = subscribe_topics(channel, self.subscription.events.exchange)
        redis_connection = channel.pool.make_connection()
        try:
            redis_connection.connect()
            redis_connection.send_command("PSUBSCRIBE", *topics)
            sock = compat.redis_socket(redis_connection)
            self._read(stop, sock, topics, lambda: connected(topics=topics))
        finally:
            redis_connection.disconnect()

    def close(self, conn: Connection) -> None:
        conn.release()

    def _read(
        self,
        stop: threading.Event,
        sock: socket.socket,
        topics: list[str],
        subscribed_all: Callable[[], None],
    ) -> None:
        reader = hiredis.Reader()
        outbox_put = self.subscription.outbox.put
        subscribed = 0
        monotonic = time.monotonic
        last_data = monotonic()
        liveness = Liveness(
            quiet_after=PING_AFTER,
            answer_within=PING_TIMEOUT,
            ask=lambda: _ping(sock),
            dead=frozen_message(),
            now=last_data,
        )
        sock.settimeout(CHECK_EVERY)
        # Read into one reused buffer: a fresh multi-megabyte bytes object per read costs page
        # faults and a shrinking copy; hiredis copies what it is fed.
        chunk = bytearray(READ_SIZE)
        chunk_view = memoryview(chunk)
        while not stop.is_set():
            try:
                size = sock.recv_into(chunk_view)
            except TimeoutError:
                liveness.check(monotonic())
                continue
            if not size:
                quiet_for = monotonic() - last_data
                raise ConnectionError(closed_by_server(quiet_for, sentinel=self._sentinel))
            received_at = time.time()
            last_data = monotonic()
            liveness.answered(last_data)
            for offset in range(0, size, FEED_SIZE):
                # hiredis takes any buffer ("s*"); its stub only lists str and bytes.
                reader.feed(chunk, offset, min(FEED_SIZE, size - offset))  # type: ignore[arg-type]
                while (reply := reader.gets()) is not False:
                    if isinstance(reply, list) and reply[0] == b"pmessage":
                        # Even an empty payload: the decoder counts it as a rejection.
                        outbox_put(RawMessage(received_at, None, reply[3], enveloped=True))
                    elif isinstance(reply, list) and reply[0] == b"psubscribe":
                        subscribed += 1
                        if subscribed == len(topics):
                            subscribed_all()
                    elif isinstance(reply, hiredis.ReplyError):
                        raise ConnectionError(f"redis answered: {reply}")
                    # anything else is a PONG
