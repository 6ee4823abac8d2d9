"""The broker connection as the intake reader reports it, for readiness, metrics and the
controller."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.exposition.families import family


@dataclass
class BrokerStatus:
    """What the reader thread reports about its connection; read by the collector."""

    connected: bool = False
    connection_errors: dict[str, int] = field(default_factory=dict)
    """Failed connection attempts and lost connections by reason
    (``celery_events_exporter.broker_errors``; replaced whole by the reader)."""
    connections_lost: int = 0
    """Established connections that ended other than by our stop: each is a gap in which events
    were lost (pub/sub keeps nothing for an absent subscriber; the exclusive event queue goes
    with its connection)."""
    connected_event: threading.Event = field(default_factory=threading.Event)
    """Set on every (re)connection, so the controller can wake the workers up again."""
    silent_workers: int = 0
    """Workers that answer the controller's inspect broadcasts while none of their events reach
    the reader: connected, yet nothing arrives (set by the controller)."""
    replies_dropped: dict[str, int] = field(default_factory=dict)
    """Inspect replies (or entries of one) the controller left out, by reason (replaced whole
    by the controller thread)."""
    broadcast_errors: dict[str, int] = field(default_factory=dict)
    """The controller's failed broadcasts and greetings by reason (replaced whole by the
    controller, so a scrape never sees it half-updated)."""

    def is_connected(self) -> bool:
        """Whether the reader holds a connection now: the exporter's readiness."""
        return self.connected


class BrokerStatusCollector(Collector):
    """The broker connection's self-metrics (the reader's and the controller's reports)."""

    def __init__(self, status: BrokerStatus) -> None:
        self.status = status

    def describe(self) -> Iterable[Metric]:
        return []  # else the registry would collect() at registration

    def collect(self) -> Iterator[Metric]:
        status = self.status
        yield family(m.EXPORTER_BROKER_CONNECTED, {(): 1.0 if status.connected else 0.0})
        connection_errors = status.connection_errors
        yield family(
            m.EXPORTER_BROKER_CONNECTION_ERRORS, {(r,): n for r, n in connection_errors.items()}
        )
        yield family(m.EXPORTER_BROKER_CONNECTIONS_LOST, {(): status.connections_lost})
        yield family(m.EXPORTER_SILENT_WORKERS, {(): status.silent_workers})
        errors = status.broadcast_errors
        yield family(m.EXPORTER_BROADCAST_ERRORS, {(r,): n for r, n in errors.items()})
        dropped = status.replies_dropped
        yield family(m.EXPORTER_CONTROL_REPLIES_DROPPED, {(r,): n for r, n in dropped.items()})
