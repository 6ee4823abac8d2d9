"""Telling a quiet broker connection from a dead or frozen one: one rule for every intake path.

A subscriber's connection may rightly stay silent for minutes (no worker sends events), and a
frozen server (a stopped process, a swapped-out host, a cut network) keeps it just as silent:
the kernel still holds the TCP connection open, so neither a read nor TCP keepalive notices.
``Liveness`` holds the rule: after ``quiet_after`` seconds without a sign of life the server is
asked (Redis: a PING on that very connection), and a server that gives no sign of life within
``answer_within`` seconds of the question is taken for gone. A protocol whose server speaks up
on its own (AMQP's heartbeats) asks nothing: the question counts as asked when the quiet spell
passed ``quiet_after``. The Redis fast path and kombu's path on Redis PING after ``PING_AFTER``
and wait ``PING_TIMEOUT``; the AMQP fast path gives the server two heartbeat intervals.
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
    """The reason a Redis reader gives when a PING went unanswered."""
    return f"no answer to PING within {ping_timeout:.0f} s: the server is frozen or unreachable"


class Liveness:
    """The rule above. The reader calls ``life(now)`` for every sign of life that does not
    answer the question (a message that may be queued ahead of the PONG), ``answered(now)``
    for one that does (the PONG; on the fast paths, any byte), and ``check(now)`` whenever it
    looks at the clock; ``check`` raises ``ConnectionError(dead)`` once the server is gone.

    ``ask()`` puts the question (False: nothing could be asked yet, e.g. not subscribed); None
    when the server speaks up on its own.
    """

    def __init__(
        self,
        *,
        quiet_after: float,
        answer_within: float,
        ask: Callable[[], bool] | None,
        dead: str,
        now: float,
    ) -> None:
        self.quiet_after = quiet_after
        self.answer_within = answer_within
        self._ask = ask
        self.dead = dead
        self._last_life = now
        self._asked_at: float | None = None

    def life(self, now: float) -> None:
        self._last_life = now

    def answered(self, now: float) -> None:
        self._last_life = now
        self._asked_at = None

    def check(self, now: float) -> None:
        if self._asked_at is None:
            if now - self._last_life <= self.quiet_after:
                return
            if self._ask is None:
                self._asked_at = self._last_life + self.quiet_after
            elif self._ask():
                self._asked_at = now
            else:
                return
        if now - max(self._asked_at, self._last_life) > self.answer_within:
            raise ConnectionError(self.dead)


class PingWatch:
    """``Liveness`` for a reader that cannot see the connection's bytes (kombu's path on Redis):
    the reader calls ``check(received)`` after every wait for data, with the number of messages
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
        self._unanswered = unanswered
        self._clock = clock
        self._received = 0
        self._pinged = False
        self._liveness = Liveness(
            quiet_after=ping_after,
            answer_within=ping_timeout,
            ask=self._ping_with(ping),
            dead=frozen_message(ping_timeout),
            now=clock(),
        )

    def _ping_with(self, ping: Callable[[], bool]) -> Callable[[], bool]:
        def ask() -> bool:
            self._pinged = ping()
            return self._pinged

        return ask

    def check(self, received: int) -> None:
        """Ping a connection quiet for ``ping_after`` s; raise if the server gave no sign of life
        within ``ping_timeout`` s of the ping."""
        now = self._clock()
        if received != self._received:
            self._received = received
            self._liveness.life(now)
        if self._pinged and self._unanswered() == 0:
            self._pinged = False
            self._liveness.answered(now)
        self._liveness.check(now)
