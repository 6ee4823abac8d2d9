"""Telling a quiet Redis connection from a frozen one.

A subscriber's connection may rightly stay silent for minutes (no worker sends events), and a
frozen server (a stopped process, a swapped-out host, a cut network) keeps it just as silent:
the kernel still holds the TCP connection open, so neither a read nor TCP keepalive notices.
Only a question tells them apart: after ``PING_AFTER`` seconds without a sign of life the reader
PINGs the server on that very connection, and a server that gives no sign of life within
``PING_TIMEOUT`` seconds of the PING is taken for gone. Both Redis intake paths follow this rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable

PING_AFTER = 2.0
"""Seconds of silence after which the connection is checked with a PING: a busy stream proves
the server alive, a quiet one is asked (a PING every 2 s costs the server nothing)."""
PING_TIMEOUT = 3.0
"""Seconds the answer to a PING may take: past it the server is frozen or unreachable, so the
reader reconnects and readiness tells the truth within ``PING_AFTER + PING_TIMEOUT`` seconds
(plus one ``CHECK_EVERY``) of the last byte."""
CHECK_EVERY = 0.5
"""Seconds a reader waits for data before it looks at the clock again: the resolution of the
two delays above."""
SOCKET_TIMEOUT = 5.0
"""Default ``socket_timeout`` and ``socket_connect_timeout`` of the Redis connections kombu and
redis-py open for the reader (their default is none): a connection attempt to a frozen server,
whose kernel still accepts the TCP connection, fails after this instead of hanging."""


def frozen_message(ping_timeout: float = PING_TIMEOUT) -> str:
    """The reason a reader gives when a PING went unanswered."""
    return f"no answer to PING within {ping_timeout:.0f} s: the server is frozen or unreachable"


class PingWatch:
    """The rule above for a reader that cannot see the connection's bytes (kombu's path): the
    reader calls ``check(received)`` after every wait for data, with the number of messages
    received so far; ``ping()`` sends a PING (False if the connection is not subscribed yet),
    ``unanswered()`` is the number of PINGs whose answer has not been read yet.

    ``check`` raises ``ConnectionError`` when neither a message nor the PONG came within
    ``ping_timeout`` seconds of the PING. Messages that keep coming while a PING is pending
    prove the server alive: on a slow reader the PONG queues up behind them.
    """

    def __init__(
        self,
        ping: Callable[[], bool],
        unanswered: Callable[[], int],
        *,
        ping_after: float = PING_AFTER,
        ping_timeout: float = PING_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ping = ping
        self._unanswered = unanswered
        self.ping_after = ping_after
        self.ping_timeout = ping_timeout
        self._clock = clock
        self._last_life = clock()
        self._received = 0
        self._pinged_at: float | None = None

    def check(self, received: int) -> None:
        """Ping a connection quiet for ``ping_after`` s; raise if the server gave no sign of life
        within ``ping_timeout`` s of the ping."""
        now = self._clock()
        if received != self._received:
            self._received = received
            self._last_life = now
        if self._pinged_at is not None and self._unanswered() == 0:
            self._pinged_at = None
            self._last_life = now
        if self._pinged_at is None:
            if now - self._last_life > self.ping_after and self._ping():
                self._pinged_at = now
        elif now - max(self._pinged_at, self._last_life) > self.ping_timeout:
            raise ConnectionError(frozen_message(self.ping_timeout))
