"""Scrapes first: the JSON API's work is bounded and gives way to ``/metrics``.

Every request runs on a thread of its own, and Python threads share one interpreter lock: 16
clients reading ``/api/tasks?limit=10000`` at once left a scrape a seventeenth of the CPU (median
1.96 s). So the API gets ``API_WORKERS`` requests at a time (the next ones wait for a worker up
to ``API_WAIT``, using no CPU, then are answered 503 with ``Retry-After``, counted), and its
work stops at checkpoints, every few rows, while a scrape renders (``ApiGate.checkpoint``,
``celery_events_exporter.scrapes``): a scrape waits for one checkpoint's worth of API work at
most. A checkpoint also ends the work of
a client that went away (``Abandoned``).
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable

from celery_events_exporter.scrapes import Scrapes
from celery_events_exporter.web.stats import WebStats

API_WORKERS = 2
"""API requests served at once."""
API_WAIT = 5.0
"""Seconds a request waits for an API worker before it is answered 503 with Retry-After: a
crowd of quick requests (``/api/workers``) is served in turn, a crowd of slow ones turned
away."""
RETRY_AFTER = 1
"""Seconds a client refused for lack of an API worker is told to wait."""
MAX_GIVE_WAY = 5.0
"""Seconds an API request waits for the scrapes at one checkpoint at most: scrapes back to back
must not starve the API for good."""


class Abandoned(Exception):
    """The client of an API request went away: its work is dropped."""


class ApiGate:
    """The API's workers, giving way to the scrapes in progress (``scrapes``); safe to use from
    any thread."""

    def __init__(self, stats: WebStats, scrapes: Scrapes, workers: int = API_WORKERS) -> None:
        self.stats = stats
        self.scrapes = scrapes
        self._workers = threading.BoundedSemaphore(workers)

    def admit(self) -> bool:
        """Take an API worker, waiting ``API_WAIT`` at most; False, counted, if none came."""
        if self._workers.acquire(timeout=API_WAIT):
            return True
        self.stats.api_refused()
        return False

    def release(self) -> None:
        self._workers.release()

    def checkpoint(self, client_gone: Callable[[], bool]) -> None:
        """Wait while a scrape renders; raise ``Abandoned`` (counted) if the client went."""
        self.scrapes.give_way(MAX_GIVE_WAY)
        if client_gone():
            self.stats.api_abandoned()
            raise Abandoned


def client_gone(connection: socket.socket) -> bool:
    """Whether the peer closed ``connection``: readable, with nothing to read. A peek at the
    raw socket (a TLS one too: nothing is consumed), never blocking."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        if not readable:
            return False  # nothing to read: the client is waiting for its answer
        data = socket.socket.recv(connection, 1, socket.MSG_PEEK)
    except (ValueError, OSError):
        return True  # closed or reset
    return data == b""
