"""Build the queue poller for a broker URL: its broker's reader, the registry, the collector."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celery_events_exporter.broker_options import EXPORTER_ONLY_OPTIONS, broker_connection
from celery_events_exporter.logging import get_logger
from celery_events_exporter.queues.collector import QueuesCollector, TaskLedger
from celery_events_exporter.queues.management import ManagementApi, read_credentials
from celery_events_exporter.queues.poller import QueuePoller
from celery_events_exporter.queues.reading import QueueReader
from celery_events_exporter.queues.registry import QueueRegistry

log = get_logger(__name__)

MAX_TIMEOUT = 5.0
"""Seconds a broker may take to answer one poll's command before the poll fails."""


@dataclass(frozen=True)
class ManagementSettings:
    url: str
    """The RabbitMQ management API's base URL, without credentials."""
    credentials_file: str | None = None
    """USER:PASSWORD on its first line; None takes the broker URL's."""


def reader_factory(
    broker_url: str,
    transport_options: dict[str, Any],
    timeout: float,
    management: ManagementSettings | None = None,
) -> Callable[[], QueueReader] | None:
    """A function that opens a queue reader for the broker, or None for brokers without one."""
    options = {k: v for k, v in transport_options.items() if k not in EXPORTER_ONLY_OPTIONS}
    connection = broker_connection(broker_url, options)
    driver = connection.transport.driver_type
    if driver == "redis":
        from celery_events_exporter.queues.redis import RedisQueues

        return lambda: RedisQueues(broker_url, options, timeout)
    if driver == "amqp":
        from celery_events_exporter.queues.amqp import AmqpQueues

        api = None
        if management is not None:
            credentials = (
                read_credentials(management.credentials_file)
                if management.credentials_file
                else (connection.userid or "guest", connection.password or "guest")
            )
            vhost = connection.virtual_host or "/"
            api = ManagementApi(management.url, vhost, credentials, timeout)
        return lambda: AmqpQueues(broker_url, options, timeout, api)
    if management is not None:
        log.warning("the RabbitMQ management API is only read on an AMQP broker")
    return None


@dataclass
class Queues:
    registry: QueueRegistry
    poller: QueuePoller | None
    """None when polling is off or the broker has no queue reader; run it on a thread."""
    collector: QueuesCollector


def build(
    broker_url: str,
    transport_options: dict[str, Any],
    *,
    named: Iterable[str],
    interval: float,
    limit: int,
    ledger: TaskLedger,
    management: ManagementSettings | None = None,
) -> Queues:
    """The registry, the poller (``interval`` 0: none) and their collector; the state's task
    ledger is corrected by the poller's readings and read by the collector."""
    registry = QueueRegistry(named, limit)
    poller = None
    if interval > 0:
        timeout = min(MAX_TIMEOUT, interval)
        open_reader = reader_factory(broker_url, transport_options, timeout, management)
        if open_reader is None:
            log.warning("queue depths are not read on this broker", broker=broker_url.split(":")[0])
        else:
            poller = QueuePoller(
                open_reader,
                registry,
                interval,
                listener=ledger.queues_read,
                sent_to=ledger.waiting_queues,
            )
    collector = QueuesCollector(poller, registry, ledger)
    return Queues(registry, poller, collector)
