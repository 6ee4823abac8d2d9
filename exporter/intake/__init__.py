"""Event intake: paths from a broker to the ingest queue, one module per path.

Each path only drains the broker into a queue of ``RawMessage``; decoding and counting happen on
the ingest thread (``exporter.ingest``) so that the broker's socket never waits for them.
"""

from __future__ import annotations

import queue
from typing import Any

from exporter.ingest import RawMessage
from exporter.intake.broker import BrokerReader, BrokerStatus
from exporter.logging import get_logger

log = get_logger(__name__)


def make_reader(
    broker_url: str,
    transport_options: dict[str, Any],
    outbox: queue.SimpleQueue[RawMessage],
    status: BrokerStatus,
) -> BrokerReader:
    """The intake path for ``broker_url``: where a faster path for a broker exists, it is chosen
    here; every path shares BrokerReader's interface (``run(stop)``, ``safe_url()``).

    Redis (``redis://``, ``rediss://``, ``sentinel://``) gets the pub/sub fast path when hiredis
    is installed; every other broker, and Redis without hiredis, goes through kombu.
    """
    try:
        from kombu import Connection

        from exporter.intake.redis import RedisPubSubReader, is_redis_url
    except ImportError as exc:  # hiredis missing: kombu's path still works
        log.info("redis fast path unavailable", reason=str(exc))
        return BrokerReader(broker_url, transport_options, outbox, status)
    if is_redis_url(Connection(broker_url, transport_options=transport_options)):
        return RedisPubSubReader(broker_url, transport_options, outbox, status)
    return BrokerReader(broker_url, transport_options, outbox, status)
