"""The decoder thread: takes raw messages off the intake backlog, decodes them and counts their
events into the state.

It runs on its own thread so that the broker reader only ever drains the socket: on Redis a
subscriber that falls behind is disconnected and its events are lost, on RabbitMQ the event queue
drops messages older than its TTL. A burst therefore waits in the intake backlog
(``celery_events_exporter.intake.backlog``), in memory bounded by bytes, where its size and age are
exported,
instead of in the broker.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import orjson
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from celery_events_exporter.events.decode import JSON_CONTENT_TYPES, decode_events, open_envelope
from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.exposition.families import family
from celery_events_exporter.intake.backlog import IntakeBacklog
from celery_events_exporter.intake.message import INVALID_ENVELOPE, RawMessage
from celery_events_exporter.logging import get_logger, sparse
from celery_events_exporter.state import DecodedMessage, State

log = get_logger(__name__)


class Decoder:
    """Pops raw messages, decodes them and applies their events to the state in batches."""

    BATCH = 256
    """Messages counted per acquisition of the state lock: amortises locking without making a
    scrape wait long."""

    TICK = 1.0
    """Seconds between the state's ticks (purging workers long gone, finding orphaned tasks),
    taken between batches or when no message came for a while: the state changes with time on
    this thread, never in a scrape."""

    def __init__(
        self, state: State, inbox: IntakeBacklog, clock: Callable[[], float] = time.time
    ) -> None:
        self.state = state
        self.inbox = inbox
        self.clock = clock
        self._in_hand: float | None = None
        self._ticked = 0.0

    @property
    def backlog(self) -> int:
        return self.inbox.qsize()

    def behind(self) -> bool:
        """More messages wait than one batch takes: counting is behind what the broker sends
        (a burst), and other threads should leave it the interpreter."""
        return self.inbox.qsize() > self.BATCH

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
                self.tick()
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
            self.tick()

    def tick(self) -> None:
        """The state's tick, at most once per ``TICK`` seconds."""
        now = self.clock()
        if now - self._ticked >= self.TICK or now < self._ticked:
            self._ticked = now
            self.state.tick(now)

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
                state.reject(INVALID_ENVELOPE, f"{type(exc).__name__}: {exc}")
                return None
        if content_type not in JSON_CONTENT_TYPES:
            state.reject("unsupported_content_type", str(content_type))
            return None
        try:
            events = decode_events(body)
        except ValueError as exc:
            state.reject("invalid_json", str(exc))
            return None
        return events, message.received_at, body


class DecoderCollector(Collector):
    """The intake backlog's and the decoder's self-metrics, read at scrape time."""

    def __init__(self, decoder: Decoder, clock: Callable[[], float] = time.time) -> None:
        self.decoder = decoder
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # else the registry would collect() at registration

    def collect(self) -> Iterator[Metric]:
        decoder = self.decoder
        yield family(m.EXPORTER_INTAKE_BACKLOG, {(): decoder.backlog})
        yield family(m.EXPORTER_INTAKE_BACKLOG_BYTES, {(): decoder.backlog_bytes})
        yield family(m.EXPORTER_EVENTS_DROPPED, {(r,): n for r, n in decoder.dropped.items()})
        yield family(m.EXPORTER_INTAKE_LAG, {(): decoder.lag(self.clock())})


class RejectionLog:
    """Logs rejected input without flooding: the 1st, 2nd, 4th, 8th... rejection per reason."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def __call__(self, reason: str, detail: str) -> None:
        seen = self._seen[reason] = self._seen.get(reason, 0) + 1
        if sparse(seen):
            log.warning("event rejected", reason=reason, detail=detail[:200], occurrences=seen)
