"""How long a reader waits before it reconnects to the broker.

Capped exponential backoff with jitter, reset by every successful connection: the first retry
after a lost connection comes at once (a broker restart is usually short), a broker that stays
away is tried every few seconds at most (so counting resumes within ``cap`` seconds of its
return), and the jitter keeps a fleet of exporters from reconnecting in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Callable

INITIAL_DELAY = 0.5
"""Seconds before the first retry after a connection was lost or first refused."""
MAX_DELAY = 5.0
"""The cap: a broker back after any outage is reconnected within this (plus the connect
timeout when the broker accepts connections but does not answer yet)."""


class Backoff:
    """``next()`` gives the seconds to wait before the next attempt: ``initial`` x 2^n capped at
    ``cap``, of which the upper half is drawn at random ("equal jitter": never less than half
    the step, so retries still back off). ``reset()`` after a successful connection."""

    def __init__(
        self,
        initial: float = INITIAL_DELAY,
        cap: float = MAX_DELAY,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self._uniform = uniform
        self._step = initial

    def next(self) -> float:
        step = self._step
        self._step = min(step * 2, self.cap)
        return step / 2 + self._uniform(0.0, step / 2)

    def reset(self) -> None:
        self._step = self.initial
