"""Queue depths on RabbitMQ (and any AMQP 0-9-1 broker): a passive ``queue.declare`` per queue.

A passive declare never creates a queue and answers with the messages ready for delivery (all
priorities of an ``x-max-priority`` queue together) and the consumer count. Messages delivered and
not yet acknowledged are not in it: only the management API counts them (``management.py``),
read after the declares when its URL is given.
A queue that does not exist is answered with 404, which closes the channel: it reads 0 and the
next queue gets a new channel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from amqp.exceptions import NotFound

from celery_events_exporter.broker_options import broker_connection
from celery_events_exporter.queues.management import ManagementApi
from celery_events_exporter.queues.reading import QueueReading
from celery_events_exporter.queues.registry import is_task_queue


class AmqpQueues:
    """Passive declares over an AMQP connection of its own, with read and write timeouts so that
    a stalled broker fails the poll instead of hanging it."""

    def __init__(
        self,
        broker_url: str,
        transport_options: dict[str, Any],
        timeout: float,
        management: ManagementApi | None = None,
    ) -> None:
        options = {**transport_options, "read_timeout": timeout, "write_timeout": timeout}
        self.connection = broker_connection(broker_url, options, connect_timeout=timeout)
        self.connection.connect()
        self._channel: Any = None
        self.management = management
        self._listed: list[str] = []
        self.partial_errors: list[tuple[str, str]] = []
        """(reason, detail) of what the last read could not tell: queues it could not declare
        (an exclusive queue of another connection: 405 RESOURCE_LOCKED; no permission: 403) and
        a failed management API call; the rest of the readings stand."""

    def discover(self) -> list[str]:
        """The virtual host's queues as the management API listed them at the last read."""
        return [name for name in self._listed if is_task_queue(name)]

    def read(self, names: Sequence[str]) -> dict[str, QueueReading]:
        readings: dict[str, QueueReading] = {}
        self.partial_errors = []
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
                self.partial_errors.append(("queue_refused", f"{name}: {exc}"))
            else:
                readings[name] = QueueReading(length=int(ready), consumers=int(consumers))
        if self.management is not None:
            self._add_unacked(self.management, readings)
        return readings

    def _add_unacked(self, management: ManagementApi, readings: dict[str, QueueReading]) -> None:
        try:
            listed = management.queues()
        except Exception as exc:  # the declares' readings stand without their unacked counts
            self.partial_errors.append(("management", f"{type(exc).__name__}: {exc}"))
            return
        self._listed = list(listed)
        for name, reading in readings.items():
            counts = listed.get(name)
            if counts is not None:
                readings[name] = replace(reading, unacked=counts.unacked)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a dead connection may fail to close: it is gone
            self.connection.release()
