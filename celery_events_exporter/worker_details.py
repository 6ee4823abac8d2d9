"""What Flower's worker page shows beyond the events: pool, prefetch count, resource usage,
consumed queues, registered tasks, reserved, scheduled and revoked, asked of the online workers
with ``inspect`` on an interval (``--worker-details-interval``; 0 turns it off).

Cost, bounded: one poll every interval sends six inspect broadcasts (stats, active_queues,
registered, reserved, scheduled, revoked), each addressed to the online workers only (at most
``MAX_DESTINATIONS``), and each waits for their replies up to ``INSPECT_TIMEOUT``: at most six
seconds of this module's own thread and connection per interval, nothing on the ingest thread
or in a scrape. What is kept is bounded too: at most ``MAX_ITEMS`` entries per list, of at most
``MAX_TEXT`` characters, for at most ``MAX_DESTINATIONS`` workers; a worker that goes offline is
forgotten at the next poll.

``conf`` (``inspect conf``: the worker's settings, broker password included) is never asked.
Of ``stats`` only numbers and the pool's and transport's names are kept, never the broker's
host, user or options. The numbers heartbeats carry (active, processed, load) are never taken
from here: the events stay the one source of those, and ``celery_worker_concurrency`` stays
the controller's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from celery_events_exporter.control import INSPECT_TIMEOUT, STOP_CHECK, control_app
from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.intake.status import BrokerStatus
from celery_events_exporter.logging import get_logger, sparse
from celery_events_exporter.queues.poller import error_reason

log = get_logger(__name__)

MAX_DESTINATIONS = 200
"""Workers asked per poll (the online ones, in name order); the rest are not polled."""
MAX_ITEMS = 100
"""Entries kept per list (queues, registered, reserved, scheduled, revoked)."""
MAX_TEXT = 200
"""Characters kept of a name, uuid or queue."""
LISTS = ("queues", "registered", "reserved", "scheduled", "revoked")
NOBODY_RETRY = 1.0
"""Seconds before the next look when no worker was online."""
MAX_QUEUE_SERIES = 20
"""Queues per worker exported as ``celery_worker_consumed_queue`` series (the API lists up to
``MAX_ITEMS``): a worker consuming hundreds of queues must not multiply the series."""


@dataclass(frozen=True)
class WorkerDetails:
    """One worker's inspect replies, bounded, without anything secret."""

    polled_at: float
    pool: str | None = None
    """The pool's implementation (``prefork``, ``threads``, ``solo``, ``gevent``...)."""
    pool_processes: int | None = None
    """Processes (or threads) the pool runs now."""
    max_concurrency: int | None = None
    prefetch_count: int | None = None
    user_cpu_seconds: float | None = None
    system_cpu_seconds: float | None = None
    max_rss_bytes: float | None = None
    transport: str | None = None
    """The broker's transport name (``redis``, ``amqp``...), nothing else of the broker."""
    queues: tuple[str, ...] = ()
    registered: tuple[str, ...] = ()
    reserved: tuple[dict[str, str], ...] = ()
    scheduled: tuple[dict[str, str], ...] = ()
    revoked: tuple[str, ...] = ()
    left_out: Mapping[str, int] = field(default_factory=dict)
    """Entries of each list past ``MAX_ITEMS`` (or unreadable), not kept."""

    def as_json(self) -> dict[str, Any]:
        return {
            "polled_at": self.polled_at,
            "pool": self.pool,
            "pool_processes": self.pool_processes,
            "max_concurrency": self.max_concurrency,
            "prefetch_count": self.prefetch_count,
            "user_cpu_seconds": self.user_cpu_seconds,
            "system_cpu_seconds": self.system_cpu_seconds,
            "max_rss_bytes": self.max_rss_bytes,
            "transport": self.transport,
            "queues": list(self.queues),
            "registered": list(self.registered),
            "reserved": list(self.reserved),
            "scheduled": list(self.scheduled),
            "revoked": list(self.revoked),
            "left_out": dict(self.left_out),
        }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value and len(value) <= MAX_TEXT else None


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value <= 10**9 else None


def _seconds(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e12:
        return float(value)
    return None


def _pool_name(implementation: Any) -> str | None:
    """``celery.concurrency.prefork:TaskPool`` -> ``prefork``."""
    text = _text(implementation)
    if text is None:
        return None
    module = text.split(":", 1)[0]
    return module.rsplit(".", 1)[-1] or None


def _bounded(items: Any, read: Callable[[Any], Any]) -> tuple[tuple[Any, ...], int]:
    """The first ``MAX_ITEMS`` readable entries of ``items``, and how many were left out."""
    if not isinstance(items, (list, tuple)):
        return (), 0
    kept: list[Any] = []
    left_out = 0
    for item in items:
        value = read(item)
        if value is None or len(kept) >= MAX_ITEMS:
            left_out += 1
        else:
            kept.append(value)
    return tuple(kept), left_out


def _request(item: Any) -> dict[str, str] | None:
    """A reserved or scheduled entry: its uuid and name (and a scheduled one's ETA), nothing of
    its arguments."""
    if not isinstance(item, dict):
        return None
    nested = item.get("request")
    request: dict[str, Any] = nested if isinstance(nested, dict) else item
    uuid, name = _text(request.get("id")), _text(request.get("name"))
    if uuid is None:
        return None
    found = {"uuid": uuid, "name": name or ""}
    eta = _text(item.get("eta")) if request is not item else None
    if eta is not None:
        found["eta"] = eta
    return found


def _queue(item: Any) -> str | None:
    return _text(item.get("name")) if isinstance(item, dict) else None


def _task_name(item: Any) -> str | None:
    # Celery lists a name alone, or followed by " [attr=value ...]".
    return _text(item.split(" ", 1)[0]) if isinstance(item, str) else None


def parse(
    hostname: str,
    polled_at: float,
    stats: Any,
    queues: Any = None,
    registered: Any = None,
    reserved: Any = None,
    scheduled: Any = None,
    revoked: Any = None,
) -> WorkerDetails:
    """One worker's details from its replies (each its part of an inspect answer, or None)."""
    stats = stats if isinstance(stats, dict) else {}
    pool = stats.get("pool") if isinstance(stats.get("pool"), dict) else {}
    rusage = stats.get("rusage") if isinstance(stats.get("rusage"), dict) else {}
    broker = stats.get("broker") if isinstance(stats.get("broker"), dict) else {}
    processes = pool.get("processes")
    maxrss = _seconds(rusage.get("maxrss"))
    left_out: dict[str, int] = {}
    lists: dict[str, tuple[Any, ...]] = {}
    for name, items, read in (
        ("queues", queues, _queue),
        ("registered", registered, _task_name),
        ("reserved", reserved, _request),
        ("scheduled", scheduled, _request),
        ("revoked", revoked, _text),
    ):
        lists[name], left = _bounded(items, read)
        if left:
            left_out[name] = left
    return WorkerDetails(
        polled_at=polled_at,
        pool=_pool_name(pool.get("implementation")),
        pool_processes=len(processes) if isinstance(processes, list) else None,
        max_concurrency=_count(pool.get("max-concurrency")),
        prefetch_count=_count(stats.get("prefetch_count")),
        user_cpu_seconds=_seconds(rusage.get("utime")),
        system_cpu_seconds=_seconds(rusage.get("stime")),
        # getrusage's ru_maxrss is in kilobytes on Linux.
        max_rss_bytes=None if maxrss is None else maxrss * 1024,
        transport=_text(broker.get("transport")),
        queues=lists["queues"],
        registered=lists["registered"],
        reserved=lists["reserved"],
        scheduled=lists["scheduled"],
        revoked=lists["revoked"],
        left_out=left_out,
    )


def _reply_of(replies: Any, hostname: str) -> Any:
    return replies.get(hostname) if isinstance(replies, dict) else None


class WorkerDetailsStore:
    """The last details of each online worker; replaced whole by each poll."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._details: dict[str, WorkerDetails] = {}

    def replace(self, details: Mapping[str, WorkerDetails]) -> None:
        with self._lock:
            self._details = dict(details)

    def get(self, hostname: str) -> WorkerDetails | None:
        with self._lock:
            return self._details.get(hostname)

    def all(self) -> dict[str, WorkerDetails]:
        with self._lock:
            return dict(self._details)


class WorkerDetailsPoller:
    """Asks the online workers for their details every ``interval`` seconds, on a thread and
    broker connection of its own (bounded as the controller's are)."""

    def __init__(
        self,
        broker_url: str,
        transport_options: dict[str, Any],
        status: BrokerStatus,
        online_workers: Callable[[float], set[str]],
        store: WorkerDetailsStore,
        *,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = control_app("celery-events-exporter-details", broker_url, transport_options)
        self.status = status
        self.online_workers = online_workers
        self.store = store
        self.interval = interval
        self.clock = clock
        self.failures = 0

    def run(self, stop: threading.Event) -> None:
        due = time.monotonic()
        while not stop.wait(STOP_CHECK):
            if time.monotonic() < due:
                continue
            due = time.monotonic() + self.interval
            if self.status.connected and not self.poll():
                # Nobody online yet (the exporter just started): look again soon rather than
                # a whole interval later.
                due = time.monotonic() + min(self.interval, NOBODY_RETRY)

    def poll(self) -> bool:
        """One round: ask the online workers, keep what they answered (offline ones dropped);
        False when no worker is online."""
        now = self.clock()
        online = sorted(self.online_workers(now))[:MAX_DESTINATIONS]
        if not online:
            self.store.replace({})
            return False
        try:
            conn = self.app.connection_for_write()
            try:
                inspector = self.app.control.inspect(
                    destination=online, timeout=INSPECT_TIMEOUT, connection=conn
                )
                stats = inspector.stats()
                queues = inspector.active_queues()
                registered = inspector.registered()
                # safe: arguments as reprs, never unpickled; only uuids and names are kept.
                reserved = inspector.reserved(safe=True)
                scheduled = inspector.scheduled(safe=True)
                revoked = inspector.revoked()
            finally:
                conn.release()
        except Exception as exc:
            self.failures += 1
            if sparse(self.failures):
                log.warning(
                    "asking the workers for their details failed",
                    reason=error_reason(exc),
                    error=f"{type(exc).__name__}: {exc}",
                    failures=self.failures,
                )
            return True
        answered = {h for h in (stats or {}) if h in online}
        self.store.replace(
            {
                host: parse(
                    host,
                    now,
                    _reply_of(stats, host),
                    _reply_of(queues, host),
                    _reply_of(registered, host),
                    _reply_of(reserved, host),
                    _reply_of(scheduled, host),
                    _reply_of(revoked, host),
                )
                for host in answered
            }
        )
        return True


GAUGES: tuple[tuple[m.MetricSpec, str], ...] = (
    (m.WORKER_POOL_PROCESSES, "pool_processes"),
    (m.WORKER_PREFETCH_COUNT, "prefetch_count"),
    (m.WORKER_CPU_USER_SECONDS, "user_cpu_seconds"),
    (m.WORKER_CPU_SYSTEM_SECONDS, "system_cpu_seconds"),
    (m.WORKER_MAX_RSS_BYTES, "max_rss_bytes"),
)
"""The catalogue's gauge -> the ``WorkerDetails`` field it exports."""


class WorkerDetailsCollector(Collector):
    """The details' numbers, for the online workers that answered the last poll."""

    def __init__(self, store: WorkerDetailsStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        details = sorted(self.store.all().items())
        for spec, attribute in GAUGES:
            gauge = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
            for hostname, found in details:
                value = getattr(found, attribute)
                if value is not None:
                    gauge.add_metric([hostname], float(value))
            yield gauge
        spec = m.WORKER_CONSUMED_QUEUE
        gauge = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
        for hostname, found in details:
            for queue in found.queues[:MAX_QUEUE_SERIES]:
                gauge.add_metric([hostname, queue], 1.0)
        yield gauge
