"""The exporter's configuration: one typed, validated object built by the CLI."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from exporter.intake.backlog import DEFAULT_BUDGET_BYTES
from exporter.intake.event_queue import (
    DEFAULT_EVENT_EXCHANGE,
    DEFAULT_EVENT_QUEUE_EXPIRES,
    DEFAULT_EVENT_QUEUE_PREFIX,
    DEFAULT_EVENT_QUEUE_TTL,
    EventSettings,
)

DEFAULT_PORT = 19808
"""Outside 9100-9999, which Prometheus' default-port allocation list has fully handed out
(9808 there belongs to another Celery exporter), and below Linux's ephemeral port range."""

DEFAULT_BROKER_URL = "redis://localhost:6379/0"

# Seconds-to-minutes tasks: the seed's image task takes ~2.7 s, batch jobs take minutes.
DEFAULT_RUNTIME_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
)  # fmt: skip
DEFAULT_QUEUE_WAIT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
)  # fmt: skip


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    broker_url: str = DEFAULT_BROKER_URL
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    listen: ListenAddress = ListenAddress("", DEFAULT_PORT)
    event_exchange: str = DEFAULT_EVENT_EXCHANGE
    """The app's event_exchange: where the workers publish their events."""
    event_queue_prefix: str = DEFAULT_EVENT_QUEUE_PREFIX
    event_queue_ttl: float = DEFAULT_EVENT_QUEUE_TTL
    """x-message-ttl of the exporter's event queue, seconds; 0 sets none."""
    event_queue_expires: float = DEFAULT_EVENT_QUEUE_EXPIRES
    """x-expires of the exporter's event queue, seconds; 0 sets none."""
    worker_timeout: float = 0.0
    """Seconds without a heartbeat before a worker reads offline; 0 = Celery's 2 x freq rule."""
    purge_offline_worker_after: float = 3600.0
    """Seconds an offline worker's series stay exported; 0 keeps them forever."""
    runtime_buckets: tuple[float, ...] = DEFAULT_RUNTIME_BUCKETS
    queue_wait_buckets: tuple[float, ...] = DEFAULT_QUEUE_WAIT_BUCKETS
    worker_label: bool = True
    enable_events: bool = True
    inspect_workers: bool = True
    broadcast_interval: float = 30.0
    max_tracked_tasks: int = 100_000
    max_exception_classes: int = 50
    log_level: str = "info"
    log_format: str = "auto"
    web_config_file: str | None = None
    """exporter-toolkit web config (basic auth, TLS); None serves plain HTTP to anyone."""
    max_recent_tasks: int = 10_000
    """Tasks the /api/tasks store keeps; 0 turns the store off."""
    expose_task_payloads: bool = False
    """Serve args, kwargs and results (masked and cut) in /api/tasks."""
    secret_key_patterns: tuple[str, ...] = ()
    """Regexes of keys whose values are masked, besides the defaults (if kept)."""
    default_secret_key_patterns: bool = True
    """Mask under redact.DEFAULT_SECRET_KEY_PATTERNS too."""
    max_payload_length: int = 1024
    max_intake_backlog_bytes: int = DEFAULT_BUDGET_BYTES
    """Byte budget of the messages read but not yet counted; past it new ones are dropped."""
    queues: tuple[str, ...] = ()
    """Queues whose depth is always polled, besides those discovered."""
    queue_poll_interval: float = 10.0
    """Seconds between two polls of the queue depths; 0 turns the poller off."""
    max_queues: int = 500
    """Queues watched at most; names discovered past it are counted, not watched."""

    @property
    def events(self) -> EventSettings:
        """The app's event settings, as every intake path takes them."""
        return EventSettings(
            exchange=self.event_exchange,
            queue_prefix=self.event_queue_prefix,
            queue_ttl=self.event_queue_ttl,
            queue_expires=self.event_queue_expires,
        )


def parse_listen_address(value: str) -> ListenAddress:
    """Parse ``HOST:PORT``, ``:PORT`` or ``[IPv6]:PORT`` the way node_exporter's flag reads."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT or :PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port must be a number, got {port_text!r} in {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be within 0-65535, got {port}")
    return ListenAddress(host, port)


def parse_buckets(value: str) -> tuple[float, ...]:
    """Parse comma-separated, strictly increasing, positive histogram bounds."""
    try:
        bounds = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"buckets must be comma-separated numbers, got {value!r}") from None
    if not bounds:
        raise ValueError("at least one bucket bound is needed")
    if any(b <= 0 or b != b or b == float("inf") for b in bounds):
        raise ValueError(f"bucket bounds must be positive and finite, got {value!r}")
    if any(later <= earlier for earlier, later in itertools.pairwise(bounds)):
        raise ValueError(f"bucket bounds must be strictly increasing, got {value!r}")
    return bounds


def parse_transport_option(value: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE``; VALUE is read as JSON when it parses, else kept as a string."""
    import json

    key, sep, raw = value.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {value!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw
