"""Scrapes first: while ``/metrics`` renders, the threads that only need the interpreter for
their own work (counting, the task history's folding and writing, the JSON API) step aside.

Python threads share one interpreter lock, handed from thread to thread every switch interval
(5 ms) or at a blocking call. A scrape makes some twenty blocking calls (the request, the state's
lock, ``/proc`` for the process metrics, the answer), and during a burst it would get back the
interpreter after each one only behind the ingest thread, the history's writer and the broker
reader, all busy (bench/README.md, "Scrapes during the burst", has the measurements). And the
ingest thread, which holds the state's lock for a batch of messages, would lose the interpreter
to the others while the scrape waited for that lock.

So a scrape is announced here (``scraping``); the ingest thread ends its batch early at the
next message and waits (``give_way``), once per scrape and per batch, ``MAX_INGEST_GIVE_WAY`` at
most, so that neither a long scrape (``memory://``'s merge on a loaded machine) nor scrapes back
to back stop counting for long; the writer waits between its units of work. The broker reader
never waits: it only drains the socket, and a subscriber that falls behind loses events.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

MAX_GIVE_WAY = 1.0
"""Seconds a thread waits for the scrapes in progress at one give-way at most."""
MAX_INGEST_GIVE_WAY = 0.25
"""Seconds the ingest thread waits for a scrape at most: enough for a scrape of the default
page, and most of one with ``memory://`` (which merges the recent-task store's window); past
this the scrape shares the interpreter with counting."""


class Scrapes:
    """The ``/metrics`` renders in progress; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._none = threading.Event()
        self._none.set()
        self.active = False
        """Whether a scrape is in progress: a plain attribute, read once per message by the
        ingest thread (a method call there would cost more than the check saves)."""
        self.begun = 0
        """Scrapes begun so far: which ones a thread has given way to already."""

    @contextmanager
    def scraping(self) -> Iterator[None]:
        """Around one scrape's work: the other threads give way until it ends."""
        with self._lock:
            self._count += 1
            self.begun += 1
            self.active = True
            self._none.clear()
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1
                if self._count == 0:
                    self.active = False
                    self._none.set()

    def give_way(self, timeout: float = MAX_GIVE_WAY) -> None:
        """Wait, using no CPU, until no scrape is in progress, ``timeout`` seconds at most."""
        self._none.wait(timeout)
