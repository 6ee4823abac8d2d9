"""Decode raw broker messages and count their events into the state.

Runs on its own thread so that the broker reader only ever drains the socket: on Redis a
subscriber that falls behind is disconnected and its events are lost, on RabbitMQ the event queue
drops messages older than its TTL. A burst therefore waits in the intake backlog
(``exporter.intake.backlog``), in memory bounded by bytes, where its size and age are exported,
instead of in the broker.
"""

from __future__ import annotations

import queue
import threading
from binascii import Error as Base64Error
from binascii import a2b_base64
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson

from exporter.events.body import loads
from exporter.intake.backlog import IntakeBacklog
from exporter.intake.message import RawMessage
from exporter.logging import get_logger
from exporter.state import DecodedMessage, State

log = get_logger(__name__)

JSON_CONTENT_TYPES = frozenset({"application/json", None, ""})


def _strict_base64() -> Callable[[str | bytes], bytes]:
    """A SIMD base64 decoder when pybase64 is installed (30x faster than binascii on kombu's
    Redis bodies), else binascii; either rejects input kombu would not have written."""
    try:
        import pybase64
    except ImportError:
        return lambda data: a2b_base64(data, strict_mode=True)
    return lambda data: pybase64.b64decode(data, validate=True)


_b64decode_strict = _strict_base64()


def b64decode(data: str | bytes) -> bytes:
    """Decode a base64 body exactly as kombu does (``base64.b64decode``, which skips characters
    outside the alphabet); the strict decoder handles what kombu writes, the lenient one the
    rest."""
    try:
        return _b64decode_strict(data)
    except (Base64Error, ValueError):
        return a2b_base64(data)


class Decoder:
    """Pops raw messages, decodes them and applies their events to the state in batches."""

    BATCH = 256
    """Messages counted per acquisition of the state lock: amortises locking without making a
    scrape wait long."""

    def __init__(self, state: State, inbox: IntakeBacklog) -> None:
        self.state = state
        self.inbox = inbox
        self._in_hand: float | None = None

    @property
    def backlog(self) -> int:
        return self.inbox.qsize()

    @property
    def backlog_bytes(self) -> int:
        return self.inbox.bytes

    @property
    def dropped(self) -> dict[str, int]:
        """Messages dropped before decoding, by reason (the intake's byte budget)."""
        return self.inbox.dropped_by_reason

    def lag(self, now: float) -> float:
        """Age of the oldest message read from the broker but not yet counted."""
        in_hand = self._in_hand
        if in_hand is None:
            return 0.0
        return max(0.0, now - in_hand)

    def run(self, stop: threading.Event) -> None:
        inbox = self.inbox
        while not stop.is_set():
            try:
                first = inbox.get(timeout=0.25)
            except queue.Empty:
                continue
            self._in_hand = first.received_at
            batch = [first]
            try:
                while len(batch) < self.BATCH:
                    batch.append(inbox.get_nowait())
            except queue.Empty:
                pass
            self.handle_batch(batch)
            self._in_hand = None

    def drain(self) -> None:
        """Count whatever is waiting; used at shutdown and by tests of pure logic."""
        while True:
            batch: list[RawMessage] = []
            try:
                while len(batch) < self.BATCH:
                    batch.append(self.inbox.get_nowait())
            except queue.Empty:
                self.handle_batch(batch)
                return
            self.handle_batch(batch)

    def handle_batch(self, batch: Sequence[RawMessage]) -> None:
        """Decode messages and count their events into the state, under one acquisition of its
        lock for all of them."""
        self.state.apply_batch(self._decoded(batch))

    def _decoded(self, batch: Sequence[RawMessage]) -> Iterator[DecodedMessage]:
        """Each message decoded as the state comes to count it: one message's events are alive
        at a time (decoding a whole batch first cost more than it saved, see bench/README.md)."""
        for message in batch:
            try:
                events = self.decode(message)
            except Exception as exc:  # a net under every check: never end the ingest thread
                log.exception("message could not be handled", error=f"{type(exc).__name__}: {exc}")
                self.state.reject("internal_error", f"{type(exc).__name__}: {exc}")
                continue
            if events is not None:
                yield events

    def handle(self, message: RawMessage) -> None:
        """Decode one broker message (a single event or a task.multi list) and count it."""
        self.handle_batch((message,))

    def decode(self, message: RawMessage) -> DecodedMessage | None:
        """The events of one broker message; None when it is rejected (counted in the state)."""
        state = self.state
        content_type, body = message.content_type, message.body
        if message.enveloped:
            try:
                content_type, body = open_envelope(body)
            except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
                state.reject("invalid_envelope", f"{type(exc).__name__}: {exc}")
                return None
        if content_type not in JSON_CONTENT_TYPES:
            state.reject("unsupported_content_type", str(content_type))
            return None
        try:
            payload: Any = loads(body)
        except ValueError as exc:
            state.reject("invalid_json", str(exc))
            return None
        # Prefork workers batch task events in a list (routing key task.multi).
        return (payload if type(payload) is list else (payload,)), message.received_at, body


def open_envelope(raw: bytes | str) -> tuple[str | None, bytes | str]:
    """(content type, body) of a kombu virtual-transport envelope, as kombu's ``Message`` reads
    them: the body is base64 when ``properties.body_encoding`` says so (kombu's Redis default).

    Raises ``ValueError``/``TypeError``/``KeyError`` on an envelope kombu could not read either.
    """
    envelope = orjson.loads(raw)
    if type(envelope) is not dict:
        raise TypeError(f"envelope is a {type(envelope).__name__}")
    body = envelope["body"]
    properties = envelope.get("properties") or {}
    if type(properties) is not dict:
        raise TypeError(f"properties is a {type(properties).__name__}")
    encoding = properties.get("body_encoding")
    if encoding == "base64":
        body = b64decode(body)
    elif encoding is not None:
        raise ValueError(f"unknown body_encoding {encoding!r}")
    if not isinstance(body, (str, bytes)):
        raise TypeError(f"body is a {type(body).__name__}")
    content_type = envelope.get("content-type")
    return (content_type if isinstance(content_type, str) else None), body


class RejectionLog:
    """Logs rejected input without flooding: the 1st, 2nd, 4th, 8th... rejection per reason."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def __call__(self, reason: str, detail: str) -> None:
        seen = self._seen[reason] = self._seen.get(reason, 0) + 1
        if seen & (seen - 1) == 0:
            log.warning("event rejected", reason=reason, detail=detail[:200], occurrences=seen)
