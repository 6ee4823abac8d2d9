"""Celery events published by hand, as any broker client may publish them: what a real worker
or client would not send, or not in one message."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from celery.events.event import get_exchange
from kombu import Connection, Producer


def publish_events(broker_url: str, events: Sequence[dict[str, Any]]) -> None:
    """``events`` in one message on the event exchange, a JSON list as a prefork worker's
    buffered events go (routing key ``task.multi``)."""
    with Connection(broker_url) as conn:
        producer = Producer(conn.default_channel, exchange=get_exchange(conn))
        producer.publish(
            orjson.dumps(events),
            routing_key="task.multi",
            content_type="application/json",
            content_encoding="utf-8",
        )


def publish_sent(broker_url: str, pairs: Iterable[tuple[str, str]]) -> None:
    """task-sent events for (task name, queue) pairs, in one message, as a client sends them:
    from a host that sends no heartbeat, for tasks no worker will ever receive."""
    publish_events(
        broker_url,
        [
            {
                "type": "task-sent",
                "uuid": str(uuid.uuid4()),
                "hostname": "crafter@nowhere",
                "timestamp": time.time(),
                "name": name,
                "queue": queue,
            }
            for name, queue in pairs
        ],
    )
