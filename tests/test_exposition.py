"""``/metrics`` as the exporter writes it, held byte for byte to prometheus-client's output in both
formats, through the per-series caches, and over HTTP as Prometheus asks for it."""

from __future__ import annotations

import gzip
import importlib
import math
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from types import ModuleType

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter.app import build_state
from exporter.config import Config, ListenAddress
from exporter.events.decode import Decoder
from exporter.exposition.collector import EventsCollector
from exporter.exposition.writer import Format, MetricsPage, fast_format, number
from exporter.intake.backlog import IntakeBacklog
from exporter.intake.status import BrokerStatus
from exporter.state import Histogram, State
from exporter.web import server as http

# What Prometheus 2.42 (Debian's package) sends with every scrape, as seen on the wire.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
T0 = 1_000.0

Reference = Callable[[Collector], bytes]
REFERENCES: dict[Format, Reference] = {
    Format.TEXT: generate_latest,
    Format.OPENMETRICS: openmetrics.generate_latest,
}


def _apply(state: State, events: Iterable[dict[str, object]]) -> None:
    with state.lock:
        for event in events:
            state.apply(event, T0)


def _task(state: State, i: int, worker: str, name: str) -> None:
    uuid = f"u{i}"
    _apply(state, [
        {"type": "task-sent", "hostname": "client", "uuid": uuid, "name": name, "queue": "q"},
        {"type": "task-received", "hostname": worker, "uuid": uuid, "name": name,
         "timestamp": T0},
        {"type": "task-started", "hostname": worker, "uuid": uuid, "timestamp": T0 + i},
        {"type": "task-failed", "hostname": worker, "uuid": uuid,
         "exception": "KeyError('k')"} if i % 7 == 0 else
        {"type": "task-succeeded", "hostname": worker, "uuid": uuid,
         "runtime": 1e6 + i if i == 3 else i / 10},
    ])  # fmt: skip


def _state(worker_label: bool = True) -> State:
    state = build_state(Config(worker_label=worker_label))
    # Escaping, "%" (the histogram lines are filled in by %-formatting) and non-ASCII names.
    names = ['odd"name\\', "new\nline", "100%d%%s", "ünïcode", "plain"]
    for i in range(60):
        _task(state, i, f"celery@w{i % 4}", names[i % 5])
    _apply(state, [
        {"type": "worker-heartbeat", "hostname": "celery@w1", "freq": 2.0, "active": 1,
         "processed": 5, "loadavg": [1, 2.5, 3], "sw_ident": "py-celery", "sw_ver": "5.7.0",
         "sw_sys": "Linux"},
        {"type": "worker-heartbeat", "hostname": "celery@w2", "freq": 2.0},
        {"type": "custom-event", "hostname": "celery@w2"},
        {"type": "task-received", "hostname": "celery@w2"},  # rejected: no uuid
    ])  # fmt: skip
    with state.lock:
        state.set_concurrency("celery@w1", 8)
        # Go writes 1e6 and more in exponent notation: counts and sums that large.
        state.runtime[("big", "celery@w3")] = Histogram([0] * 17 + [1_500_000], 2.5e9)
        state.queue_wait[("big", "celery@w3")] = Histogram([999_999, 1] + [0] * 14, 12.5)
    return state


def _collector(state: State) -> EventsCollector:
    return EventsCollector(
        state, BrokerStatus(), Decoder(state, IntakeBacklog()), clock=lambda: T0 + 1
    )


def _assert_same(collector: EventsCollector, fmt: Format) -> None:
    ours = MetricsPage(collector, []).render("" if fmt is Format.TEXT else PROMETHEUS_ACCEPT)[0]
    assert ours == REFERENCES[fmt](collector)


@pytest.mark.parametrize("fmt", list(Format))
@pytest.mark.parametrize("worker_label", [True, False])
def test_both_formats_are_byte_identical_to_prometheus_client(
    fmt: Format, worker_label: bool
) -> None:
    collector = _collector(_state(worker_label))
    _assert_same(collector, fmt)
    _assert_same(collector, fmt)  # again, from the caches


@pytest.mark.parametrize("fmt", list(Format))
def test_the_caches_follow_changes_and_purged_workers(fmt: Format) -> None:
    state = _state()
    collector = _collector(state)
    _assert_same(collector, fmt)
    for i in range(100, 110):  # some series change, one appears
        _task(state, i, "celery@w1", "plain" if i < 109 else "fresh")
    _assert_same(collector, fmt)
    with state.lock:
        state.settings.purge_offline_worker_after = 1.0
        assert "celery@w1" in state.purge_offline_workers(T0 + 100)
    collector.clock = lambda: T0 + 100
    _assert_same(collector, fmt)
    caches = collector._task_series["celery_task_runtime_seconds"]
    assert not [key for key in caches.histograms if key[1] == "celery@w1"]


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
    ("accept", "fmt"),
    [
        ("", Format.TEXT),
        ("*/*", Format.TEXT),
        ("text/plain;version=0.0.4", Format.TEXT),
        (PROMETHEUS_ACCEPT, Format.OPENMETRICS),
        ("application/openmetrics-text", Format.OPENMETRICS),
        ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8", Format.OPENMETRICS),
        ("application/openmetrics-text;version=1.0.0;escaping=dots", None),
        ("application/openmetrics-text;version=2.0.0", None),
        ("text/plain;version=1.0.0;escaping=values", None),
    ],
)
def test_the_page_is_what_prometheus_client_writes_for_every_accept_header(
    accept: str, fmt: Format | None
) -> None:
    """The fast path takes the formats it writes exactly; the others go to prometheus-client.
    Either way the page is the one registry's exposition, with one ``# EOF`` in OpenMetrics."""
    encoder, content_type = choose_encoder(accept)
    assert fast_format(encoder) is fmt
    page = MetricsPage(_collector(_state()), [_Fixed()])
    body, served_type = page.render(accept)
    assert served_type == content_type
    assert body == encoder(page.registry)


@pytest.mark.parametrize(
    "value",
    [0, 1, 999_999, 1_000_000, 12_345_678, -3, 0.5, 1e-7, 999_999.5, 1e6, 2.5e9, -0.25,
     math.inf, -math.inf, math.nan],
)  # fmt: skip
def test_number_matches_prometheus_client(value: float) -> None:
    assert number(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


def test_a_prometheus_scrape_gets_gzipped_openmetrics() -> None:
    page = MetricsPage(_collector(_state()), [_Fixed()])
    server = http.serve(ListenAddress("127.0.0.1", 0), page, is_ready=lambda: True)
    try:
        port = server.server_address[1]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"},
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
    assert body == openmetrics.generate_latest(page.registry)  # type: ignore[no-untyped-call]
    assert body.endswith(b"\n# EOF\n")


def test_gzip_is_plain_gzip_with_isal_or_without(monkeypatch: pytest.MonkeyPatch) -> None:
    body, _ = MetricsPage(_collector(_state()), []).render(PROMETHEUS_ACCEPT)
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
