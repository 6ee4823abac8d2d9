"""Time /metrics rendering in process, for a state holding W x M (task, worker) pairs: the
prometheus-client path (``generate_latest``) against the exporter's own text writer
(``EventsCollector.render_text``), and check that both write the same bytes.

    python -m bench.render --workers 40 --names 30
"""

from __future__ import annotations

import argparse
import queue
import statistics
import time

from prometheus_client.exposition import generate_latest

from exporter.app import build_state
from exporter.collector import EventsCollector
from exporter.config import Config
from exporter.ingest import Ingestor
from exporter.intake.broker import BrokerStatus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=40)
    parser.add_argument("--names", type=int, default=30)
    args = parser.parse_args(argv)
    state = build_state(Config())
    now = time.time()
    for w in range(args.workers):
        host = f"celery@bench-{w:04d}"
        for n in range(args.names):
            uuid, name = f"{w}-{n}", f"bench.task_{n:04d}"
            for event in (
                {"type": "task-received", "uuid": uuid, "name": name, "timestamp": now},
                {"type": "task-started", "uuid": uuid, "timestamp": now + 0.01},
                {"type": "task-succeeded", "uuid": uuid, "runtime": 0.02},
            ):
                state.apply({**event, "hostname": host}, now)
    collector = EventsCollector(state, BrokerStatus(), Ingestor(state, queue.SimpleQueue()))
    slow = generate_latest(collector)
    fast = collector.render_text().encode()
    series = sum(1 for line in slow.splitlines() if not line.startswith(b"#"))
    timings = {}
    for label, render in (
        ("prometheus_client", lambda: generate_latest(collector)),
        ("render_text", lambda: collector.render_text()),
    ):
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            render()
            runs.append(time.perf_counter() - start)
        timings[label] = statistics.median(runs) * 1000
    print(
        f"{args.workers} x {args.names} pairs, {series} series, identical={slow == fast}: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in timings.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
