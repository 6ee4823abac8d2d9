"""The ``/metrics`` page: the event families, then the runtime ones, in the negotiated format,
byte for byte what prometheus-client writes for the same families; and over HTTP as Prometheus
asks for it (OpenMetrics, gzip)."""

from __future__ import annotations

import gzip
import importlib
import urllib.request
from collections.abc import Iterator
from functools import partial
from types import ModuleType

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from celery_events_exporter.app import build_state
from celery_events_exporter.config import Config, ListenAddress
from celery_events_exporter.exposition import negotiation
from celery_events_exporter.exposition.page import MetricsPage
from celery_events_exporter.exposition.writer import Format
from celery_events_exporter.web import server as http
from tests.exposition_oracle import page_registry, reference
from tests.test_collector import collector_for, sample_state
from tests.test_negotiation import PROMETHEUS_2_42, PROMETHEUS_3


class _Fixed(Collector):
    """Families of the kinds the runtime collectors export, with fixed values."""

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily("process_cpu_seconds", "CPU time.", unit="seconds")
        cpu.add_metric([], 1.25)
        yield cpu
        info = GaugeMetricFamily("python_info", "Python.", labels=["version"])
        info.add_metric(["3.11.7"], 1.0)
        yield info


@pytest.mark.parametrize(
    "accept",
    [
        "",
        "*/*",
        "text/plain;version=0.0.4",
        PROMETHEUS_2_42,
        PROMETHEUS_3,
        "application/openmetrics-text",
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
        "application/openmetrics-text;version=1.0.0;escaping=dots",
        "application/openmetrics-text;version=2.0.0",
        "text/plain;version=1.0.0;escaping=values",
    ],
)
def test_the_page_is_what_prometheus_client_writes_for_the_negotiated_format(accept: str) -> None:
    """One page, the event families and the others, with one ``# EOF`` in OpenMetrics."""
    collector = collector_for(sample_state())
    page = MetricsPage(collector, [_Fixed()])
    body, content_type = page.render(accept)
    choice = negotiation.choose(accept)
    assert content_type == choice.content_type
    assert body == reference(page_registry(collector, [_Fixed()]), choice.format)
    assert body == page.render(accept)[0]  # again, from the caches


@pytest.mark.parametrize("fmt", list(Format))
def test_an_empty_state_still_writes_every_family_header(fmt: Format) -> None:
    collector = collector_for(build_state(Config()))
    page = MetricsPage(collector, [])
    assert page.generate(fmt) == reference(page_registry(collector, []), fmt)


def test_a_prometheus_scrape_gets_gzipped_openmetrics() -> None:
    collector = collector_for(sample_state())
    page = MetricsPage(collector, [_Fixed()])
    server = http.serve(ListenAddress("127.0.0.1", 0), page, is_ready=lambda: True)
    try:
        port = server.server_address[1]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Accept": PROMETHEUS_2_42, "Accept-Encoding": "gzip"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert response.headers["Content-Type"] == (
                "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores"
            )
            body = gzip.decompress(response.read())
    finally:
        server.shutdown()
        server.server_close()
    assert body == reference(page_registry(collector, [_Fixed()]), Format.OPENMETRICS)
    assert body.endswith(b"\n# EOF\n")


def test_gzip_is_plain_gzip_with_isal_or_without(monkeypatch: pytest.MonkeyPatch) -> None:
    body, _ = MetricsPage(collector_for(sample_state()), []).render(PROMETHEUS_2_42)
    assert gzip.decompress(http._gzip_compressor()(body)) == body
    real = importlib.import_module

    def without_isal(name: str, package: str | None = None) -> ModuleType:
        if name.startswith("isal"):
            raise ImportError(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", without_isal)
    stdlib = http._gzip_compressor()
    assert isinstance(stdlib, partial)
    assert stdlib.func is gzip.compress
    assert gzip.decompress(stdlib(body)) == body
