"""Decode raw broker messages and count their events into the state.

Runs on its own thread so that the broker reader only ever drains the socket: on Redis a
subscriber that falls behind is disconnected and its events are lost, on RabbitMQ the event queue
drops messages older than its TTL. A burst therefore waits here, in memory, where its size and age
are exported, instead of in the broker.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import orjson

from exporter.logging import get_logger
from exporter.state import State

log = get_logger(__name__)

JSON_CONTENT_TYPES = frozenset({"application/json", None, ""})


@dataclass(frozen=True, slots=True)
class RawMessage:
    received_at: float
    """When the reader took the message off the socket (exporter's clock)."""
    content_type: str | None
    body: bytes | str


class Ingestor:
    """Pops raw messages, decodes them and applies their events to the state in batches."""

    BATCH = 256
    """Messages counted per acquisition of the state lock: amortises locking without making a
    scrape wait long."""

    def __init__(self, state: State, inbox: queue.SimpleQueue[RawMessage]) -> None:
        self.state = state
        self.inbox = inbox
        self._in_hand: float | None = None

    @property
    def backlog(self) -> int:
        return self.inbox.qsize()

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
            with self.state.lock:
                for message in batch:
                    self.handle(message)
            self._in_hand = None

    def drain(self) -> None:
        """Count whatever is waiting; used at shutdown and by tests of pure logic."""
        while True:
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                return
            with self.state.lock:
                self.handle(message)

    def handle(self, message: RawMessage) -> None:
        """Decode one broker message (a single event or a task.multi list) and count it.

        The caller holds the state lock.
        """
        state = self.state
        if message.content_type not in JSON_CONTENT_TYPES:
            state.reject("unsupported_content_type", str(message.content_type))
            return
        try:
            payload: Any = orjson.loads(message.body)
        except orjson.JSONDecodeError as exc:
            state.reject("invalid_json", str(exc))
            return
        received_at = message.received_at
        if isinstance(payload, list):  # prefork workers batch task events (routing key task.multi)
            for event in payload:
                state.apply(event, received_at)
        else:
            state.apply(payload, received_at)


class RejectionLog:
    """Logs rejected input without flooding: the 1st, 2nd, 4th, 8th... rejection per reason."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def __call__(self, reason: str, detail: str) -> None:
        seen = self._seen[reason] = self._seen.get(reason, 0) + 1
        if seen & (seen - 1) == 0:
            log.warning("event rejected", reason=reason, detail=detail[:200], occurrences=seen)
