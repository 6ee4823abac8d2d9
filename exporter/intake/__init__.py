"""Event intake: paths from a broker to the ingest queue, one module per path.

Each path only drains the broker into a queue of ``RawMessage``; decoding and counting happen on
the ingest thread (``exporter.ingest``) so that the broker's socket never waits for them.
"""

from __future__ import annotations

import queue
from typing import Any

from exporter.ingest import RawMessage
from exporter.intake.broker import BrokerReader, BrokerStatus


def make_reader(
    broker_url: str,
    transport_options: dict[str, Any],
    outbox: queue.SimpleQueue[RawMessage],
    status: BrokerStatus,
) -> BrokerReader:
    """The intake path for ``broker_url``: where a faster path for a broker exists, it is chosen
    here; every path shares BrokerReader's interface (``run(stop)``, ``safe_url()``)."""
    return BrokerReader(broker_url, transport_options, outbox, status)
