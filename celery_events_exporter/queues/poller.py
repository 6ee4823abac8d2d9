"""The queue poller: a thread with its own broker connection that reads every watched queue's depth
each interval and keeps the last readings for the collector.

Nothing here runs on the ingest thread or in a scrape: a scrape reads the last readings, however
long the broker takes to answer (a stalled broker fails the poll at the reader's socket timeout;
until then, and after, the last values stay, with their age and the errors counted).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from celery_events_exporter.broker_errors import ERROR_REASONS as ERROR_REASONS
from celery_events_exporter.broker_errors import error_reason as error_reason
from celery_events_exporter.logging import get_logger, sparse
from celery_events_exporter.queues.reading import QueueReader, QueueReading
from celery_events_exporter.queues.registry import QueueRegistry

log = get_logger(__name__)

ReadingsListener = Callable[[Mapping[str, QueueReading], float], None]
"""(readings, wall-clock time the poll started) -> None, called on the poller thread."""


@dataclass
class PollerStatus:
    """What the collector reads; each field is replaced whole by the poller thread."""

    readings: Mapping[str, QueueReading] = field(default_factory=dict)
    """The last successful poll's readings (kept through failed polls)."""
    read_at: float | None = None
    """Wall-clock time the last successful poll started; None before the first."""
    duration: float | None = None
    """Seconds the last poll took, failed or not."""
    errors: dict[str, int] = field(default_factory=dict)
    """Failed polls (and queues the broker refused to describe) by reason."""


class QueuePoller:
    def __init__(
        self,
        open_reader: Callable[[], QueueReader],
        registry: QueueRegistry,
        interval: float,
        *,
        listener: ReadingsListener | None = None,
        sent_to: Callable[[], Iterable[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.open_reader = open_reader
        self.registry = registry
        self.interval = interval
        self.listener = listener
        self.sent_to = sent_to
        """The queues task-sent events named so far (read each poll, off the ingest thread)."""
        self.clock = clock
        self.status = PollerStatus()
        self._reader: QueueReader | None = None
        self._errors_logged: dict[str, int] = {}

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                started = time.monotonic()
                self.poll_once()
                stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            self._close()

    def poll_once(self) -> None:
        """Read every watched queue once; record the readings or the error."""
        started, started_at = time.monotonic(), self.clock()
        try:
            if self._reader is None:
                self._reader = self.open_reader()
            reader = self._reader
            self.registry.add(reader.discover())
            if self.sent_to is not None:
                self.registry.add(self.sent_to())
            readings = reader.read(self.registry.names())
        except Exception as exc:
            self._count_error(error_reason(exc), f"{type(exc).__name__}: {exc}")
            self._close()
        else:
            for reason, detail in getattr(reader, "partial_errors", ()):
                self._count_error(reason, detail)
            self.status.readings = readings
            self.status.read_at = started_at
            self.registry.note_readings(readings)
            if self.listener is not None:
                try:
                    self.listener(readings, started_at)
                except Exception as exc:  # a bug there must not stop the polling thread
                    self._count_error("other", f"{type(exc).__name__}: {exc}")
        finally:
            self.status.duration = time.monotonic() - started

    def _count_error(self, reason: str, detail: str) -> None:
        errors = dict(self.status.errors)
        errors[reason] = errors.get(reason, 0) + 1
        self.status.errors = errors
        seen = self._errors_logged[reason] = self._errors_logged.get(reason, 0) + 1
        if sparse(seen):
            log.warning("queue poll failed", reason=reason, detail=detail[:300], occurrences=seen)

    def _close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            try:
                reader.close()
            except Exception as exc:  # a dead connection may fail to close: it is gone anyway
                log.debug("closing the queue reader failed", error=str(exc))
