"""Broadcasts to the workers: wake them up (so they announce themselves at once), turn their
task events on (so workers started without ``-E`` still send them), and ask their pool size
(heartbeats do not carry it).

All go over the broker's control exchange, on a connection of their own: kombu connections are
not shared across threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from exporter.intake.status import BrokerStatus
from exporter.logging import get_logger
from exporter.state import State

log = get_logger(__name__)

INSPECT_TIMEOUT = 1.0
"""Seconds to collect inspect replies; a worker too busy to answer is asked again next time."""

STOP_CHECK = 0.2
"""Seconds between looks at the stop event while waiting for the next broadcast: a wait of a
whole broadcast interval would hold a SIGTERM up for that long."""


def pool_sizes(replies: Any) -> dict[str, int]:
    """{worker hostname: max-concurrency} from ``inspect().stats()``'s replies; workers whose
    reply lacks a usable pool size are left out."""
    sizes: dict[str, int] = {}
    if not isinstance(replies, dict):
        return sizes
    for hostname, stats in replies.items():
        pool = stats.get("pool") if isinstance(stats, dict) else None
        size = pool.get("max-concurrency") if isinstance(pool, dict) else None
        if isinstance(hostname, str) and type(size) is int and size > 0:
            sizes[hostname] = size
    return sizes


class Controller:
    def __init__(
        self,
        broker_url: str,
        transport_options: dict[str, Any],
        status: BrokerStatus,
        state: State,
        *,
        enable_events: bool,
        inspect_workers: bool,
        interval: float,
        on_active_queues: Callable[[Any], None] | None = None,
    ) -> None:
        self.app = Celery("celery-events-exporter", broker=broker_url, set_as_current=False)
        self.app.conf.broker_transport_options = transport_options
        self.app.conf.broker_connection_retry_on_startup = False
        self.status = status
        self.state = state
        self.enable_events = enable_events
        self.inspect_workers = inspect_workers
        self.interval = interval
        self.on_active_queues = on_active_queues
        """Given each ``inspect active_queues`` reply: the queue poller watches those queues."""

    def run(self, stop: threading.Event) -> None:
        connected = self.status.connected_event
        due = time.monotonic() + self.interval
        while not stop.is_set():
            # Broadcast right after each (re)connection, then every interval: workers that start
            # later need enable_events too, and a broadcast sent while they were down is lost.
            reconnected = connected.wait(min(STOP_CHECK, max(0.0, due - time.monotonic())))
            if stop.is_set():
                return
            if not reconnected and time.monotonic() < due:
                continue
            due = time.monotonic() + self.interval
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
                if self.inspect_workers:
                    inspector = self.app.control.inspect(timeout=INSPECT_TIMEOUT, connection=conn)
                    sizes = pool_sizes(inspector.stats())
                    with self.state.lock:
                        for hostname, size in sizes.items():
                            self.state.set_concurrency(hostname, size)
                if self.on_active_queues is not None:
                    inspector = self.app.control.inspect(timeout=INSPECT_TIMEOUT, connection=conn)
                    self.on_active_queues(inspector.active_queues())
        except Exception as exc:
            log.warning("broadcast to workers failed", error=f"{type(exc).__name__}: {exc}")
