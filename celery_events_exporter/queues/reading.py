"""What a queue reader reports, whatever the broker."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class QueueReading:
    """One queue as the broker described it at one poll."""

    length: int
    """Messages ready for a consumer (waiting)."""
    consumers: int | None = None
    """Consumers the broker counts (RabbitMQ); None where the broker cannot tell (Redis)."""
    unacked: int | None = None
    """Messages delivered and not yet acknowledged, where known (RabbitMQ's management API)."""
    oldest_ids: tuple[str | None, ...] = ()
    """The task id of the oldest message of each of the queue's non-empty lists (None where it
    could not be read), where the broker lets us peek (Redis: one list per priority step)."""


class QueueReader(Protocol):
    """One broker connection that reads queue depths; used by the poller thread only."""

    def discover(self) -> Iterable[str]:
        """Queue names the broker itself knows of (kombu's bindings on Redis, the management
        API's listing on RabbitMQ), maybe none; asked every poll, so a costly lookup is the
        reader's to space out."""
        ...

    def read(self, names: list[str]) -> dict[str, QueueReading]:
        """The current reading of each queue in ``names``; raises when the broker is unusable."""
        ...

    def close(self) -> None: ...


# A reader may also have ``partial_errors: list[tuple[reason, detail]]``: what its last read
# could not tell while the rest of the readings stand (the poller counts them by reason).
