"""Scrapes under API load (issue 20): /metrics latency while many clients read /api/tasks.

python -m bench.api_load                         # both scenarios, about a minute each
python -m bench.api_load --only hidden --seconds 30

A private Redis, the exporter, ``--tasks`` recent tasks published as a worker's events would be
(so the store is full), then ``--clients`` threads reading ``/api/tasks?limit=10000`` in a loop
while one scraper reads /metrics every 0.25 s. Scenarios: ``hidden`` (payloads hidden, the
default: 16 clients) and ``exposed`` (``--expose-task-payloads``, every args and result a 4 kB
field of escaped quotes, the masker's worst case before issue 20: 4 clients). Prints the
scrapes' latency (median, p95, max) and the API's answers by status.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import requests
from celery.events.event import get_exchange
from kombu import Connection, Producer

from bench.brokers import private_redis
from bench.consumers import Exporter

CRAFTED = "'" + "\\'" * 2048  # 4 kB: 60 ms a field for the quadratic masker
SCENARIOS = {"hidden": (16, False), "exposed": (4, True)}
"""name -> (clients, payloads exposed)."""


def publish(url: str, tasks: int, payload: str) -> None:
    now = time.time()
    with Connection(url) as conn:
        producer = Producer(conn.default_channel, exchange=get_exchange(conn))
        for start in range(0, tasks, 200):
            events: list[dict[str, Any]] = []
            for i in range(start, min(tasks, start + 200)):
                common = {"uuid": f"bench-{i:06d}", "hostname": "w1@bench", "timestamp": now}
                events.append({"type": "task-received", "name": "t", "args": payload, **common})
                events.append(
                    {"type": "task-succeeded", "result": payload, "runtime": 0.1, **common}
                )
            producer.publish(
                orjson.dumps(events),
                routing_key="task.multi",
                content_type="application/json",
                content_encoding="utf-8",
            )


def run(name: str, tasks: int, seconds: float) -> dict[str, Any]:
    clients, exposed = SCENARIOS[name]
    logs = Path(tempfile.gettempdir()) / "cee-bench-logs"
    logs.mkdir(exist_ok=True)
    with private_redis() as url:
        args = ["--expose-task-payloads"] if exposed else []
        exporter = Exporter(url, logs / f"api-load-{name}.log", *args)
        try:
            publish(url, tasks, CRAFTED if exposed else "(1, 2)")
            while exporter.scrape_value("celery_exporter_tracked_tasks") is None:
                time.sleep(0.5)
            time.sleep(2.0)
            # The store merges on its first read: before the clocks start.
            requests.get(f"{exporter.url}/api/tasks?limit=1", timeout=120)
            statuses: Counter[int] = Counter()
            stop = threading.Event()

            def reader() -> None:
                with requests.Session() as session:
                    while not stop.is_set():
                        try:
                            response = session.get(
                                f"{exporter.url}/api/tasks?limit=10000", timeout=120
                            )
                            statuses[response.status_code] += 1
                        except requests.RequestException:
                            statuses[0] += 1

            threads = [threading.Thread(target=reader, daemon=True) for _ in range(clients)]
            for thread in threads:
                thread.start()
            latencies: list[float] = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                _, took = exporter.scrape()
                latencies.append(took)
                time.sleep(0.25)
            stop.set()
            for thread in threads:
                thread.join(130)
        finally:
            exporter.stop()
    latencies.sort()
    return {
        "scenario": name,
        "clients": clients,
        "tasks": tasks,
        "scrapes": len(latencies),
        "median_s": round(statistics.median(latencies), 3),
        "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "max_s": round(latencies[-1], 3),
        "api_answers": dict(sorted(statuses.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=45.0)
    options = parser.parse_args(argv)
    print("| scenario | clients | tasks | scrapes | median s | p95 s | max s | API answers |")
    print("|---|---|---|---|---|---|---|---|")
    for name in options.only.split(","):
        row = run(name, options.tasks, options.seconds)
        print(
            f"| {row['scenario']} | {row['clients']} | {row['tasks']} | {row['scrapes']} "
            f"| {row['median_s']} | {row['p95_s']} | {row['max_s']} | {row['api_answers']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
