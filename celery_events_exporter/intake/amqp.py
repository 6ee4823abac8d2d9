"""A fast path for RabbitMQ: read the event queue's deliveries straight off the AMQP socket.

kombu and py-amqp spend ~70 us on every delivered message (frame reads by exact size, method
argument decoding, a ``Message`` object, callbacks), on the thread that must keep the socket
drained before RabbitMQ's 5 s message TTL drops events. Here py-amqp does only what happens once
per connection: the handshake, the queue declaration (the very ``Queue`` kombu's path declares,
from the app's event settings: exclusive, auto-delete, the event exchange, TTL and expiry) and
``basic.consume`` with ``no_ack``. From then on the reader thread receives the socket's bytes in
large reads and ``FrameParser`` cuts them into deliveries (method ``basic.deliver``, content
header, body frames up to ``frame_max`` each), queueing each message's raw body for the ingest
thread.

It also does what py-amqp did for the connection: sends a heartbeat frame every half interval
(the only thing this client ever writes), treats silence longer than two intervals as a dead
connection, and turns ``connection.close``, ``channel.close`` and ``basic.cancel`` from the server
into ``ConnectionError`` so that the reader's lifecycle (``celery_events_exporter.intake.reader``)
reconnects. Silence is judged by the one rule of ``celery_events_exporter.intake.liveness``.

Plain TCP only: TLS (``amqps://``, ``ssl`` options) stays on kombu's path (``make_reader``).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from kombu import Connection

from celery_events_exporter.intake import compat
from celery_events_exporter.intake.liveness import Liveness
from celery_events_exporter.intake.message import RawMessage
from celery_events_exporter.intake.reader import Connected, Subscription
from celery_events_exporter.logging import get_logger

log = get_logger(__name__)

READ_SIZE = 4 << 20
"""Bytes taken per socket read: while the ingest thread holds the GIL the reader waits for it,
so each turn must take everything the kernel has buffered."""

AMQP_TRANSPORTS = frozenset({"amqp", "pyamqp"})

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

# (class id, method id) of the methods the reader acts on (AMQP 0-9-1).
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_CLOSE = (20, 40)
CHANNEL_CLOSE_OK = (20, 41)
BASIC_CANCEL = (60, 30)
BASIC_DELIVER = (60, 60)

_frame_header = struct.Struct(">BHI").unpack_from
_method_ids = struct.Struct(">HH").unpack_from
_content_header = struct.Struct(">HHQH").unpack_from
_reply_code = struct.Struct(">H").unpack_from


class FrameError(ConnectionError):
    """The byte stream is not AMQP as expected: the connection cannot be trusted any more."""


class ServerClosed(ConnectionError):
    """The server closed the connection or the channel, or cancelled the consumer."""

    def __init__(self, what: str, code: int, text: str, reply: bytes | None) -> None:
        super().__init__(f"{what} by the server: {code} {text}".rstrip())
        self.code = code
        self.reply = reply
        """The frame that acknowledges the close (close-ok), sent back before reconnecting."""


def method_frame(channel: int, ids: tuple[int, int], arguments: bytes = b"") -> bytes:
    payload = struct.pack(">HH", *ids) + arguments
    return struct.pack(">BHI", FRAME_METHOD, channel, len(payload)) + payload + b"\xce"


def connection_close_frame(code: int = 200, text: str = "exporter stopping") -> bytes:
    raw = text.encode()[:255]
    return method_frame(0, CONNECTION_CLOSE, struct.pack(">HB", code, len(raw)) + raw + b"\0" * 4)


class FrameParser:
    """Cuts a consumer's AMQP byte stream into messages: complete messages of ``channel`` go to
    ``deliver`` as ``RawMessage(received_at, content type, body)``; a partial frame waits for
    the rest. ``receive`` reads a socket straight into the parser's buffer (no per-read
    allocation, no joining of a partial frame with the next read), ``feed`` takes bytes.

    Heartbeats and methods the reader has no use for (``connection.blocked``...) are skipped;
    closes and cancels raise ``ServerClosed``; anything malformed raises ``FrameError``.
    """

    def __init__(
        self, deliver: Callable[[RawMessage], None], channel: int = 1, capacity: int = READ_SIZE
    ) -> None:
        self._deliver = deliver
        self._channel = channel
        self._buffer = bytearray(capacity)
        self._view = memoryview(self._buffer)
        self._end = 0
        """Bytes held at the start of the buffer: the beginning of a frame still incomplete."""
        self._expect_header = False
        self._content_type: str | None = None
        self._body_size = -1
        """Bytes of body still to come for the message in progress; -1 between messages."""
        self._parts: list[bytes] = []
        self._content_types: dict[bytes, str] = {}

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of their frame."""
        return self._end

    def receive(self, sock: socket.socket) -> int:
        """One ``recv`` into the buffer, then parse; returns the bytes read (0: end of stream)."""
        self._make_room()
        n = sock.recv_into(self._view[self._end :])
        if n:
            self._end += n
            self._parse(time.time())
        return n

    def feed(self, data: bytes, received_at: float) -> None:
        incoming = memoryview(data)
        while incoming:
            room = self._make_room()
            taken = incoming[:room]
            self._view[self._end : self._end + len(taken)] = taken
            self._end += len(taken)
            incoming = incoming[len(taken) :]
            self._parse(received_at)

    def _make_room(self) -> int:
        room = len(self._buffer) - self._end
        if room == 0:  # a single frame longer than the buffer (a frame_max above READ_SIZE)
            self._view.release()
            self._buffer.extend(bytes(len(self._buffer)))
            self._view = memoryview(self._buffer)
            room = len(self._buffer) - self._end
        return room

    def _parse(self, received_at: float) -> None:
        data = self._buffer
        view = self._view
        end = self._end
        pos = 0
        deliver = self._deliver
        channel = self._channel
        try:
            while end - pos >= 8:
                frame_type, frame_channel, size = _frame_header(data, pos)
                start = pos + 7
                stop = start + size
                if stop >= end:
                    break  # the frame (or its end octet) is still on its way
                if data[stop] != FRAME_END:
                    raise FrameError(f"frame end {data[stop]:#04x} instead of 0xce at {stop}")
                pos = stop + 1
                if frame_type == FRAME_BODY:
                    if frame_channel != channel:
                        continue
                    remaining = self._body_size - size
                    if remaining < 0:
                        raise FrameError("body frame outside a message, or longer than announced")
                    if remaining == 0 and not self._parts:
                        self._body_size = -1
                        deliver(
                            RawMessage(received_at, self._content_type, bytes(view[start:stop]))
                        )
                    else:
                        self._parts.append(bytes(view[start:stop]))
                        self._body_size = remaining
                        if remaining == 0:
                            body = b"".join(self._parts)
                            self._parts = []
                            self._body_size = -1
                            deliver(RawMessage(received_at, self._content_type, body))
                elif frame_type == FRAME_METHOD:
                    self._method(data, start, size, frame_channel)
                elif frame_type == FRAME_HEADER:
                    if frame_channel != channel:
                        continue
                    self._header(data, start, size, received_at)
                elif frame_type != FRAME_HEARTBEAT:
                    raise FrameError(f"unknown frame type {frame_type}")
        finally:
            rest = end - pos
            if rest and pos:
                data[:rest] = data[pos:end]  # same length: allowed while the view exists
            self._end = rest

    def _method(self, data: bytearray, start: int, size: int, frame_channel: int) -> None:
        if size < 4:
            raise FrameError("method frame too short")
        ids = _method_ids(data, start)
        if frame_channel == self._channel:
            if ids == BASIC_DELIVER:
                if self._body_size >= 0 or self._expect_header:
                    raise FrameError("basic.deliver inside another message")
                self._expect_header = True
            elif ids == CHANNEL_CLOSE:
                code, text = _close_reason(data, start + 4)
                reply = method_frame(frame_channel, CHANNEL_CLOSE_OK)
                raise ServerClosed("channel closed", code, text, reply)
            elif ids == BASIC_CANCEL:
                raise ServerClosed("consumer cancelled", 0, "", None)
        elif frame_channel == 0 and ids == CONNECTION_CLOSE:
            code, text = _close_reason(data, start + 4)
            reply = method_frame(0, CONNECTION_CLOSE_OK)
            raise ServerClosed("connection closed", code, text, reply)

    def _header(self, data: bytearray, start: int, size: int, received_at: float) -> None:
        if not self._expect_header:
            raise FrameError("content header without basic.deliver")
        if size < 14:
            raise FrameError("content header frame too short")
        self._expect_header = False
        _class_id, _weight, body_size, flags = _content_header(data, start)
        content_type: str | None = None
        if flags & 0x8000:  # content-type, a shortstr, is the first property when present
            length = data[start + 14]
            raw = bytes(data[start + 15 : start + 15 + length])
            known = self._content_types.get(raw)
            if known is None:
                known = self._content_types[raw] = raw.decode("utf-8", "replace")
            content_type = known
        if body_size == 0:
            self._deliver(RawMessage(received_at, content_type, b""))
        else:
            self._content_type = content_type
            self._body_size = body_size


def _close_reason(data: bytearray, pos: int) -> tuple[int, str]:
    try:
        (code,) = _reply_code(data, pos)
        length = data[pos + 2]
        return code, data[pos + 3 : pos + 3 + length].decode("utf-8", "replace")
    except (struct.error, IndexError):
        return 0, ""


def is_plain_amqp_url(connection: Connection) -> bool:
    """py-amqp over plain TCP: the transports whose socket the fast path can read."""
    return connection.transport_cls in AMQP_TRANSPORTS and not connection.ssl


class AmqpPath:
    """py-amqp for the handshake and the declaration, ``FrameParser`` for the deliveries."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription

    def consume(self, conn: Connection, stop: threading.Event, connected: Connected) -> None:
        channel: Any = conn.channel()
        self.subscription.event_queue(conn)(channel).declare()
        queue_name = self.subscription.queue_name
        channel.basic_consume(queue_name, no_ack=True, callback=_never_called)
        amqp_connection: Any = conn.connection
        transport = amqp_connection.transport
        if not compat.is_py_amqp_tcp_transport(transport):
            raise RuntimeError(f"unexpected py-amqp transport {type(transport).__name__}")
        parser = FrameParser(self.subscription.outbox.put, channel.channel_id)
        # py-amqp reads frames by exact size, so it holds nothing past consume-ok; if it
        # ever did, those bytes come first.
        leftover = compat.py_amqp_read_buffer(transport)
        if leftover:
            parser.feed(leftover, time.time())
        connected(queue=queue_name, heartbeat=amqp_connection.heartbeat)
        self._read(stop, transport.sock, float(amqp_connection.heartbeat or 0), parser)

    def close(self, conn: Connection) -> None:
        _close(conn)

    def _read(
        self, stop: threading.Event, sock: socket.socket, heartbeat: float, parser: FrameParser
    ) -> None:
        sock.settimeout(min(1.0, heartbeat / 4) if heartbeat else 1.0)
        receive = parser.receive
        monotonic = time.monotonic
        last_sent = monotonic()
        # The server sends heartbeats on its own: silence for two intervals is a dead
        # connection (py-amqp's rule), nothing to ask.
        liveness = Liveness(
            quiet_after=heartbeat,
            answer_within=heartbeat,
            ask=None,
            dead=f"no frame from the server for {2 * heartbeat:.0f} s",
            now=last_sent,
        )
        while not stop.is_set():
            if heartbeat and monotonic() - last_sent >= heartbeat / 2:
                sock.sendall(HEARTBEAT_FRAME)
                last_sent = monotonic()
            try:
                received = receive(sock)
            except TimeoutError:
                if heartbeat:
                    liveness.check(monotonic())
                continue
            except ServerClosed as closed:
                if closed.reply is not None:
                    with contextlib.suppress(OSError):
                        sock.sendall(closed.reply)
                raise
            if not received:
                raise ConnectionError("connection closed by the server")
            liveness.answered(monotonic())
        with contextlib.suppress(OSError):  # going away anyway
            sock.sendall(connection_close_frame())


def _never_called(message: Any) -> None:  # pragma: no cover - py-amqp never reads deliveries
    pass


def _close(conn: Connection) -> None:
    """Drop the connection without py-amqp reading from the socket (it would have to wade
    through deliveries to find close-ok): the queue is auto-delete either way."""
    try:
        conn.collect()
    except Exception as exc:  # closing a dead connection: nothing left to do
        log.debug("closing the broker connection failed", error=f"{type(exc).__name__}: {exc}")
