"""The app's event settings and the event queue every intake path declares from them.

Celery publishes events to ``event_exchange`` (default ``celeryev``); a receiver bound to any
other exchange sees nothing, silently. The exporter therefore takes the app's event settings
(``--event-exchange``, ``--event-queue-prefix``, ``--event-queue-ttl``,
``--event-queue-expires``, named after Celery's) and declares its queue exactly as Celery 5.7's
``EventReceiver`` does: exclusive, auto-delete, not durable. RabbitMQ 4.3 refuses transient
queues that are not exclusive (``541``, deprecated feature ``transient_nonexcl_queues``); an
exclusive queue is accepted by every RabbitMQ release and goes with its connection.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from celery.events.event import get_exchange
from kombu import Connection, Queue

DEFAULT_EVENT_EXCHANGE = "celeryev"
DEFAULT_EVENT_QUEUE_PREFIX = "celeryev"
DEFAULT_EVENT_QUEUE_TTL = 5.0
DEFAULT_EVENT_QUEUE_EXPIRES = 60.0
ROUTING_KEY = "#"
"""Every event type, as Celery's EventReceiver binds by default."""


@dataclass(frozen=True)
class EventSettings:
    """Celery's ``event_*`` settings of the app whose events are exported."""

    exchange: str = DEFAULT_EVENT_EXCHANGE
    queue_prefix: str = DEFAULT_EVENT_QUEUE_PREFIX
    queue_ttl: float = DEFAULT_EVENT_QUEUE_TTL
    """Seconds a message may wait in the queue (``x-message-ttl``); 0 leaves it unset."""
    queue_expires: float = DEFAULT_EVENT_QUEUE_EXPIRES
    """Seconds an unused queue lives on (``x-expires``); 0 leaves it unset."""


DEFAULT_EVENT_SETTINGS = EventSettings()


def event_queue_name(settings: EventSettings) -> str:
    """A fresh queue name: the app's prefix, then who we are and a uuid, so that an operator
    reading ``rabbitmqctl list_queues`` sees which consumer it is."""
    return f"{settings.queue_prefix}.celery-events-exporter.{uuid.uuid4()}"


def event_queue(conn: Connection, name: str, settings: EventSettings) -> Queue:
    """The event queue as Celery 5.7's EventReceiver declares it (exchange type switched to
    fanout on Redis by Celery's own ``get_exchange``)."""
    return Queue(
        name,
        exchange=get_exchange(conn, name=settings.exchange),
        routing_key=ROUTING_KEY,
        auto_delete=True,
        durable=False,
        exclusive=True,
        message_ttl=settings.queue_ttl or None,
        expires=settings.queue_expires or None,
    )
