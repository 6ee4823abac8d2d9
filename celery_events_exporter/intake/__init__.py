"""Event intake: paths from a broker to the intake backlog (``backlog.py``).

One reader lifecycle (``reader.py``: connect, drain, notice a lost or frozen connection, back
off, reconnect, report) runs one ``IntakePath`` per broker kind: kombu's (``kombu_reader.py``),
the Redis pub/sub fast path (``redis.py``) and the AMQP fast path (``amqp.py``). Each path only
drains the broker into the backlog of ``RawMessage``s; decoding and counting happen on the
decoder thread (``celery_events_exporter.decoder``) so that the broker's socket never waits for
them.
"""

from __future__ import annotations

from typing import Any

from celery_events_exporter.broker_options import FAST_PATH_OPTION, broker_connection
from celery_events_exporter.intake.amqp import AmqpPath, is_plain_amqp_url
from celery_events_exporter.intake.backlog import Outbox
from celery_events_exporter.intake.event_queue import DEFAULT_EVENT_SETTINGS, EventSettings
from celery_events_exporter.intake.kombu_reader import KombuPath
from celery_events_exporter.intake.reader import IntakePath, Reader, RejectHook, Subscription
from celery_events_exporter.intake.status import BrokerStatus
from celery_events_exporter.logging import get_logger

log = get_logger(__name__)

__all__ = ["FAST_PATH_OPTION", "Reader", "make_reader"]


def make_reader(
    broker_url: str,
    transport_options: dict[str, Any],
    outbox: Outbox,
    status: BrokerStatus,
    events: EventSettings = DEFAULT_EVENT_SETTINGS,
    on_reject: RejectHook | None = None,
) -> Reader:
    """The reader for ``broker_url``, with the intake path chosen here: where a faster path for
    a broker exists, it is taken.

    Redis (``redis://``, ``rediss://``, ``sentinel://``) gets the pub/sub fast path when hiredis
    is installed; RabbitMQ over plain TCP (``amqp://``, ``pyamqp://``) the frame-reading fast
    path; every other broker (``amqps://`` included), and Redis without hiredis, goes through
    kombu. The transport option ``exporter_fast_path: false`` forces kombu's path. Every path
    follows the app's event settings ``events`` (exchange, queue prefix, TTL, expiry).
    """
    subscription = Subscription(broker_url, transport_options, outbox, events, on_reject)
    fast = transport_options.get(FAST_PATH_OPTION, True)
    return Reader(_path(subscription) if fast else KombuPath(subscription), status)


def _path(subscription: Subscription) -> IntakePath:
    connection = broker_connection(subscription.broker_url, subscription.transport_options)
    if is_plain_amqp_url(connection):
        return AmqpPath(subscription)
    try:
        from celery_events_exporter.intake.redis import RedisPubSubPath, is_redis_url
    except ImportError as exc:  # hiredis missing: kombu's path still works
        log.info("redis fast path unavailable", reason=str(exc))
        return KombuPath(subscription)
    if is_redis_url(connection):
        return RedisPubSubPath(subscription)
    return KombuPath(subscription)
