"""Queue depths on RabbitMQ (and any AMQP 0-9-1 broker): a passive ``queue.declare`` per queue.

A passive declare never creates a queue and answers with the messages ready for delivery (all
priorities of an ``x-max-priority`` queue together) and the consumer count. Messages delivered and
not yet acknowledged are not in it: only the management API counts them (``management.py``).
A queue that does not exist is answered with 404, which closes the channel: it reads 0 and the
next queue gets a new channel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from amqp.exceptions import NotFound
from kombu import Connection

from exporter.queues.reading import QueueReading


class AmqpQueues:
    """Passive declares over an AMQP connection of its own, with read and write timeouts so that
    a stalled broker fails the poll instead of hanging it."""

    def __init__(self, broker_url: str, transport_options: dict[str, Any], timeout: float) -> None:
        options = {**transport_options, "read_timeout": timeout, "write_timeout": timeout}
        self.connection = Connection(broker_url, connect_timeout=timeout, transport_options=options)
        self.connection.connect()
        self._channel: Any = None
        self.refused: dict[str, str] = {}
        """Queues the last read could not declare, with the broker's reply: an exclusive queue
        of another connection (405 RESOURCE_LOCKED), no permission (403)."""

    def discover(self) -> list[str]:
        return []  # RabbitMQ lists queues only through the management API

    def read(self, names: Sequence[str]) -> dict[str, QueueReading]:
        readings: dict[str, QueueReading] = {}
        self.refused = {}
        channel_errors = self.connection.channel_errors
        for name in names:
            if self._channel is None:
                self._channel = self.connection.channel()
            try:
                _, ready, consumers = self._channel.queue_declare(queue=name, passive=True)
            except NotFound:
                self._channel = None  # the broker closed it
                readings[name] = QueueReading(length=0, consumers=0)
            except channel_errors as exc:
                self._channel = None
                self.refused[name] = str(exc)
            else:
                readings[name] = QueueReading(length=int(ready), consumers=int(consumers))
        return readings

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a dead connection may fail to close: it is gone
            self.connection.release()
