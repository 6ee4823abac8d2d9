"""The intake backlog: broker messages read off the socket, waiting for the decoder thread.

The reader thread must keep draining the broker whatever the decoder's pace: on Redis a
subscriber that falls behind is cut off by the server (``client-output-buffer-limit pubsub``) and
everything meanwhile is lost, on RabbitMQ the event queue's TTL drops what waits too long. So a
burst waits here, in the exporter's memory, and this is where memory is bounded: by a byte budget
(``--max-intake-backlog-bytes``). Past it the reader drops each new message (counted in
``dropped``) and goes on reading, so the socket stays drained and the loss is known and counted
rather than a disconnect's unknown one.

The same budget bounds the task history's buffer (``Spill``): the history keeps each counted
message's JSON until its writer folds it, and in a burst both fill at once. Counting comes first:
the backlog never drops a message for the history's sake; when the two together would pass the
budget, the history sheds its newest buffered batches (counted as its own drops), and its sink
takes new ones only within what the backlog leaves (``room``). So the budget bounds the
process's buffered events, whichever stage holds them.

Thread safety without a lock: ``put`` runs on the reader thread only and ``get`` on the decoder
thread only, and each side writes only its own running total of bytes.
"""

from __future__ import annotations

import queue
from typing import Protocol

from celery_events_exporter.intake.message import RawMessage
from celery_events_exporter.logging import get_logger, sparse

log = get_logger(__name__)

DEFAULT_BUDGET_BYTES = 256 << 20
"""The default byte budget: at ~6 KB per Redis message of 24 task events, 40 k messages (about
1 M task events, seconds behind at the decoder's pace) before anything is dropped."""

MESSAGE_OVERHEAD = 130
"""Bytes a waiting message costs beside its body: the RawMessage, its body's object header, its
timestamp and its slot in the queue (measured with tracemalloc: ~130 bytes)."""

INTAKE_BUDGET = "intake_budget"
"""The drop reason of messages that arrived while the backlog was over its budget."""


class Outbox(Protocol):
    """Where a reader puts what it reads: the backlog, or any queue in tests."""

    def put(self, message: RawMessage) -> None: ...


class Spill(Protocol):
    """A buffer that shares the backlog's budget and gives way to it: the task history's."""

    @property
    def sheddable_bytes(self) -> int:
        """Bytes it holds that ``shed`` can free."""
        ...

    def shed(self, nbytes: int) -> None:
        """Drop (and count) buffered items worth at least ``nbytes``, or all it can."""
        ...


class IntakeBacklog:
    """A FIFO of ``RawMessage`` bounded by bytes: ``put`` (reader thread) drops what would
    exceed the budget, ``get``/``get_nowait`` (decoder thread) hand on the rest in order."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"the intake byte budget must be positive, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._queue: queue.SimpleQueue[RawMessage] = queue.SimpleQueue()
        self._bytes_in = 0
        """Bytes ever queued: written by the reader thread only."""
        self._bytes_out = 0
        """Bytes ever taken: written by the decoder thread only."""
        self.dropped = 0
        """Messages dropped because the backlog was over its budget (reader thread only)."""
        self.spill: Spill | None = None
        """The buffer sharing the budget, which sheds when the backlog needs the room."""

    def put(self, message: RawMessage) -> None:
        size = len(message.body) + MESSAGE_OVERHEAD
        wanted = self._bytes_in - self._bytes_out + size
        if wanted > self.budget_bytes:
            self.dropped = dropped = self.dropped + 1
            if sparse(dropped):
                log.warning(
                    "intake backlog over its byte budget: dropping messages",
                    budget_bytes=self.budget_bytes,
                    backlog_bytes=self.bytes,
                    dropped_messages=dropped,
                )
            return
        spill = self.spill
        if spill is not None and (over := wanted + spill.sheddable_bytes - self.budget_bytes) > 0:
            spill.shed(over)
        self._bytes_in += size
        self._queue.put(message)

    def get(self, timeout: float | None = None) -> RawMessage:
        message = self._queue.get(timeout=timeout)
        self._bytes_out += len(message.body) + MESSAGE_OVERHEAD
        return message

    def get_nowait(self) -> RawMessage:
        message = self._queue.get_nowait()
        self._bytes_out += len(message.body) + MESSAGE_OVERHEAD
        return message

    def room(self) -> int:
        """Bytes of the budget the backlog leaves to the buffer sharing it."""
        return self.budget_bytes - self.bytes

    def qsize(self) -> int:
        return self._queue.qsize()

    @property
    def bytes(self) -> int:
        """Bytes the waiting messages hold, by the budget's account."""
        return max(0, self._bytes_in - self._bytes_out)

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        """Dropped messages by reason; present at 0 from the start, so that ``increase()`` sees
        the first drop."""
        return {INTAKE_BUDGET: self.dropped}
