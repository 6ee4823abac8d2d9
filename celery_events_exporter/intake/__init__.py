"""Event intake: paths from a broker to the intake backlog (``backlog.py``), one module per path.

Each path only drains the broker into the backlog of ``RawMessage``s; decoding and counting
happen on the decoder thread (``celery_events_exporter.decoder``) so that the broker's socket never
waits
for them.
"""

from __future__ import annotations

from typing import Any

from kombu import Connection

from celery_events_exporter.intake.amqp import AmqpReader, is_plain_amqp_url
from celery_events_exporter.intake.backlog import Outbox
from celery_events_exporter.intake.event_queue import DEFAULT_EVENT_SETTINGS, EventSettings
from celery_events_exporter.intake.kombu_reader import BrokerReader, RejectHook
from celery_events_exporter.intake.status import BrokerStatus
from celery_events_exporter.logging import get_logger

log = get_logger(__name__)

FAST_PATH_OPTION = "exporter_fast_path"
"""Transport option read (and removed) by the exporter: false keeps kombu's intake path."""


def make_reader(
    broker_url: str,
    transport_options: dict[str, Any],
    outbox: Outbox,
    status: BrokerStatus,
    events: EventSettings = DEFAULT_EVENT_SETTINGS,
    on_reject: RejectHook | None = None,
) -> BrokerReader:
    """The intake path for ``broker_url``: where a faster path for a broker exists, it is chosen
    here; every path shares BrokerReader's interface (``run(stop)``, ``safe_url()``).

    Redis (``redis://``, ``rediss://``, ``sentinel://``) gets the pub/sub fast path when hiredis
    is installed; RabbitMQ over plain TCP (``amqp://``, ``pyamqp://``) the frame-reading fast
    path; every other broker (``amqps://`` included), and Redis without hiredis, goes through
    kombu. The transport option ``exporter_fast_path: false`` forces kombu's path. Every path
    follows the app's event settings ``events`` (exchange, queue prefix, TTL, expiry).
    """
    options = dict(transport_options)
    if not options.pop(FAST_PATH_OPTION, True):
        return BrokerReader(broker_url, options, outbox, status, events, on_reject)
    connection = Connection(broker_url, transport_options=options)
    if is_plain_amqp_url(connection):
        return AmqpReader(broker_url, options, outbox, status, events, on_reject)
    try:
        from celery_events_exporter.intake.redis import RedisPubSubReader, is_redis_url
    except ImportError as exc:  # hiredis missing: kombu's path still works
        log.info("redis fast path unavailable", reason=str(exc))
        return BrokerReader(broker_url, options, outbox, status, events, on_reject)
    if is_redis_url(connection):
        return RedisPubSubReader(broker_url, options, outbox, status, events, on_reject)
    return BrokerReader(broker_url, options, outbox, status, events, on_reject)
