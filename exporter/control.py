"""Broadcasts to the workers: wake them up (so they announce themselves at once) and turn their
task events on (so workers started without ``-E`` still send them).

Both are fire-and-forget broadcasts over the broker's control exchange, on a connection of their
own: kombu connections are not shared across threads.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery

from exporter.intake.broker import BrokerStatus
from exporter.logging import get_logger

log = get_logger(__name__)


class Controller:
    def __init__(
        self,
        broker_url: str,
        transport_options: dict[str, Any],
        status: BrokerStatus,
        enable_events: bool,
        interval: float,
    ) -> None:
        self.app = Celery("celery-events-exporter", broker=broker_url, set_as_current=False)
        self.app.conf.broker_transport_options = transport_options
        self.app.conf.broker_connection_retry_on_startup = False
        self.status = status
        self.enable_events = enable_events
        self.interval = interval

    def run(self, stop: threading.Event) -> None:
        connected = self.status.connected_event
        while not stop.is_set():
            # Broadcast right after each (re)connection, then every interval: workers that start
            # later need enable_events too, and a broadcast sent while they were down is lost.
            reconnected = connected.wait(self.interval)
            if stop.is_set():
                return
            if not self.status.connected:
                continue
            connected.clear()
            self.broadcast(wake_up=reconnected)

    def broadcast(self, *, wake_up: bool) -> None:
        try:
            with self.app.connection_for_write() as conn:
                if self.enable_events:
                    self.app.control.enable_events(connection=conn)
                if wake_up:
                    self.app.control.broadcast("heartbeat", connection=conn)
        except Exception as exc:
            log.warning("broadcast to workers failed", error=f"{type(exc).__name__}: {exc}")
