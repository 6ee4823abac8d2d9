"""Time /metrics rendering in process, for a state holding W x M (task, worker) pairs, in both
formats a scrape can get: the text format, and OpenMetrics, which Prometheus 2.x asks for first.

Each format is rendered as the exporter serves it (``MetricsPage.render``, the process and runtime
families included) with the state unchanged between renders, and after a fraction of the
(task, worker) pairs saw a task (as between two real scrapes, 15 s apart on a busy fleet); then
once through prometheus-client for reference (the families of the tests' oracle,
``tests.exposition_oracle``, and the same runtime collectors). The event families must be
byte-identical to prometheus-client's in both formats.

    python -m bench.render --workers 40 --names 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from prometheus_client.core import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from celery_events_exporter.app import build_state
from celery_events_exporter.config import Config
from celery_events_exporter.exposition import negotiation
from celery_events_exporter.exposition.collector import EventsCollector
from celery_events_exporter.exposition.page import MetricsPage
from celery_events_exporter.state import State
from tests.exposition_oracle import page_registry, reference

# What Prometheus 2.42 sends (seen on the wire); it gets OpenMetrics.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
FORMATS = {"text": "text/plain;version=0.0.4", "openmetrics": PROMETHEUS_ACCEPT}
HEARTBEAT = {
    "type": "worker-heartbeat",
    "freq": 2.0,
    "active": 3,
    "processed": 1234,
    "loadavg": [0.5, 0.75, 1.25],
    "sw_ident": "py-celery",
    "sw_ver": "5.7.0",
    "sw_sys": "Linux",
}

Pair = tuple[str, str]
Touch = Callable[[], None]


def _run_task(state: State, pair: Pair, uuid: str, now: float) -> None:
    host, name = pair
    events = (
        {"type": "task-received", "uuid": uuid, "name": name, "timestamp": now},
        {"type": "task-started", "uuid": uuid, "timestamp": now + 0.01},
        {"type": "task-succeeded", "uuid": uuid, "runtime": 0.02},
    )
    state.apply_many([{**event, "hostname": host} for event in events], now)


def _page(state: State, now: float, with_runtime: bool) -> tuple[EventsCollector, MetricsPage]:
    # A fixed clock: the workers stay online however long prometheus-client takes.
    events = EventsCollector(state, clock=lambda: now)
    if not with_runtime:
        return events, MetricsPage(events, [])
    runtime = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=runtime)
    PlatformCollector(registry=runtime)
    GCCollector(registry=runtime)
    return events, MetricsPage(events, [runtime])


def _median_ms(
    render: Callable[[], object], before: Callable[[], None], runs: int
) -> tuple[float, float]:
    """Median wall and CPU ms per render: on a shared machine, the CPU time is the steadier."""
    wall, cpu = [], []
    for _ in range(runs):
        before()
        start, start_cpu = time.perf_counter(), time.thread_time()
        render()
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return statistics.median(wall) * 1000, statistics.median(cpu) * 1000


def _row(
    events: EventsCollector, page: MetricsPage, accept: str, runs: int, touches: dict[str, Touch]
) -> dict[str, tuple[float, float]]:
    """Median ms per render after each of ``touches``, then through prometheus-client."""
    fmt = negotiation.choose(accept).format
    registry = page_registry(events, page.others)
    page.render(accept)  # warm the caches
    row = {
        label: _median_ms(lambda: page.render(accept), touch, runs)
        for label, touch in touches.items()
    }
    row["prometheus_client"] = _median_ms(lambda: reference(registry, fmt), _nothing, 3)
    return row


def _nothing() -> None:
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=40)
    parser.add_argument("--names", type=int, default=30)
    parser.add_argument("--runs", type=int, default=15, help="renders per measurement")
    parser.add_argument(
        "--changed", type=float, default=0.1, help="fraction of pairs that see a task per render"
    )
    args = parser.parse_args(argv)
    state = build_state(Config())
    now = time.time()
    pairs = [
        (f"celery@bench-{w:04d}", f"bench.task_{n:04d}")
        for w in range(args.workers)
        for n in range(args.names)
    ]
    for i, pair in enumerate(pairs):
        _run_task(state, pair, f"seed-{i}", now)
    for w in range(args.workers):
        state.apply({**HEARTBEAT, "hostname": f"celery@bench-{w:04d}"}, now)
    tasks = iter(range(10**9))

    def touch(count: int) -> Touch:
        def before() -> None:
            for _ in range(count):
                i = next(tasks)
                _run_task(state, pairs[i % len(pairs)], f"t-{i}", now)

        return before

    events, events_only = _page(state, now, with_runtime=False)
    series = 0
    oracle = page_registry(events, [])
    full = _page(state, now, with_runtime=True)
    for fmt, accept in FORMATS.items():
        for _ in range(2):  # the second render comes from the caches, if any
            ours, _ = events_only.render(accept)
            expected = reference(oracle, negotiation.choose(accept).format)
            if ours != expected:
                print(f"{fmt}: the event families differ from prometheus-client's")
                return 1
        series = sum(1 for line in expected.splitlines() if not line.startswith(b"#"))
    print(f"{args.workers} x {args.names} pairs, {series} event series, both formats identical")

    changed = max(1, round(args.changed * len(pairs)))
    touches = {
        "unchanged": _nothing,
        f"{args.changed:.0%} changed": touch(changed),
        "all changed": touch(len(pairs)),
    }
    for fmt, accept in FORMATS.items():
        row = _row(*full, accept, args.runs, touches)
        print(
            f"{fmt:>11}: "
            + ", ".join(f"{k} {wall:.1f} ms (CPU {cpu:.1f})" for k, (wall, cpu) in row.items())
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
