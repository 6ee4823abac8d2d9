"""What the HTTP side refused or could not serve, counted for ``/metrics``.

The server and the API count here from their request threads; the collector reads the counts at
scrape time. Every count has a log line beside it: the metric says how often, the log says why.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from celery_events_exporter.exposition import catalogue as m


class WebStats:
    """Thread-safe counters of the HTTP server and the JSON API."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open_connections = 0
        self.refused_connections = 0
        self.errors: dict[str, int] = {}
        """Requests answered 500 (or dropped mid-answer), by path."""
        self.skipped_rows: dict[str, int] = {}
        """Rows left out of an API answer because they could not be served, by endpoint."""
        self.api_requests_refused = 0
        """API requests answered 503 because every API worker was busy."""
        self.api_requests_abandoned = 0
        """API requests whose client went away before their answer was ready."""

    def connection_opened(self, limit: int) -> bool:
        """Count a connection in; False (and counted as refused) when ``limit`` are open."""
        with self._lock:
            if self.open_connections >= limit:
                self.refused_connections += 1
                return False
            self.open_connections += 1
            return True

    def connection_closed(self) -> None:
        with self._lock:
            self.open_connections -= 1

    def error(self, path: str) -> None:
        with self._lock:
            self.errors[path] = self.errors.get(path, 0) + 1

    def skipped(self, endpoint: str, rows: int = 1) -> None:
        with self._lock:
            self.skipped_rows[endpoint] = self.skipped_rows.get(endpoint, 0) + rows

    def api_refused(self) -> None:
        with self._lock:
            self.api_requests_refused += 1

    def api_abandoned(self) -> None:
        with self._lock:
            self.api_requests_abandoned += 1

    def snapshot(self) -> tuple[int, int, dict[str, int], dict[str, int]]:
        """(open connections, refused connections, errors by path, skipped rows by endpoint)."""
        with self._lock:
            return (
                self.open_connections,
                self.refused_connections,
                dict(self.errors),
                dict(self.skipped_rows),
            )

    def api_snapshot(self) -> tuple[int, int]:
        """(API requests refused for lack of a worker, API requests abandoned by their client)."""
        with self._lock:
            return self.api_requests_refused, self.api_requests_abandoned


# Paths counted by name in the error metric; anything else counts as "other" (a client picks the
# path, so it must not pick label values).
KNOWN_PATHS = frozenset({"/", "/metrics", "/healthz", "/readyz", "/api/tasks", "/api/workers"})


def path_label(path: str) -> str:
    return path if path in KNOWN_PATHS else "other"


class WebCollector(Collector):
    """The HTTP side's self-metrics, from a ``WebStats``."""

    def __init__(self, stats: WebStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        open_connections, refused, errors, skipped = self.stats.snapshot()
        spec = m.EXPORTER_HTTP_CONNECTIONS
        gauge = GaugeMetricFamily(spec.name, spec.help)
        gauge.add_metric([], open_connections)
        yield gauge
        spec = m.EXPORTER_HTTP_CONNECTIONS_REFUSED
        counter = CounterMetricFamily(spec.name, spec.help)
        counter.add_metric([], refused)
        yield counter
        spec = m.EXPORTER_HTTP_ERRORS
        counter = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
        for path, count in sorted(errors.items()):
            counter.add_metric([path], count)
        yield counter
        spec = m.EXPORTER_API_ROWS_SKIPPED
        counter = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
        for endpoint in ("/api/tasks", "/api/workers"):
            counter.add_metric([endpoint], skipped.get(endpoint, 0))
        yield counter
        refused_api, abandoned = self.stats.api_snapshot()
        for spec, count in (
            (m.EXPORTER_API_REQUESTS_REFUSED, refused_api),
            (m.EXPORTER_API_REQUESTS_ABANDONED, abandoned),
        ):
            counter = CounterMetricFamily(spec.name, spec.help)
            counter.add_metric([], count)
            yield counter
