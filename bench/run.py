"""Run the benchmark scenarios and print a table (markdown); see bench/README.md.

python -m bench.run                 # every scenario, a few minutes on 2 cores
python -m bench.run --only redis-throughput,amqp-throughput
python -m bench.run --scale 0.1     # smaller runs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
from amqp.exceptions import ResourceLocked

from bench.brokers import (
    QueueWatch,
    expired_messages,
    private_redis,
    private_vhost,
    vhost_queues,
)
from bench.consumers import BareReceiver, Exporter, Usage, parse_counts
from bench.fleet import Expected
from bench.publisher import BrokerPublisher, make_fleet, prepare_burst
from bench.render import PROMETHEUS_ACCEPT

LOGS = Path(tempfile.gettempdir()) / "cee-bench-logs"


@dataclass
class Row:
    scenario: str
    broker: str
    consumer: str
    task_events: int
    seconds: float = 0.0
    rate: float = 0.0
    cpu_per_100k: float = 0.0
    peak_rss_mb: float = 0.0
    lost: int = 0
    render_ms: float | None = None
    series: int | None = None
    max_lag_s: float | None = None
    expired: int | None = None
    """RabbitMQ: messages expired (dead-lettered) from the consumer's event queue."""
    round: int = 1
    """Which repetition (``--repeat``) the row belongs to: a ratio compares rows of one round."""
    peak_ready: int | None = None
    """RabbitMQ: the most messages seen waiting in the consumer's queue (sampled every 0.1 s)."""
    messages: int | None = None
    """RabbitMQ: messages published."""
    counted_s: float | None = None
    """The exporter: seconds from the start of publishing until ``/metrics`` (read every
    ``SCRAPE_PAUSE``) showed every event of the run counted; ``seconds`` runs until the process
    goes idle, its task history written too."""
    slowest_scrape_s: float | None = None
    """The slowest ``/metrics`` (as Prometheus asks for it) of those made while the burst was
    counted (``scrape_during``)."""
    tasks_lost: int | None = None
    """Tasks whose task-received the consumer did not count."""
    notes: list[str] = field(default_factory=list)


def _broker(kind: str, unlimited: bool) -> AbstractContextManager[str]:
    return private_redis(unlimited_pubsub_buffer=unlimited) if kind == "redis" else private_vhost()


def _lost(expected: Expected, by_type: dict[str, float], tasks: dict[tuple[str, str, str], float],
          ) -> tuple[int, list[str]]:  # fmt: skip
    """Events the consumer did not count, and any per-series mismatch (counted twice, wrong
    label): exactness, not just totals."""
    lost = sum(max(0, n - int(by_type.get(t, 0))) for t, n in expected.events_by_type.items())
    notes = [f"extra {t}: {int(by_type[t]) - n}" for t, n in expected.events_by_type.items()
             if by_type.get(t, 0) > n]  # fmt: skip
    wrong = sum(1 for key, n in expected.tasks.items() if tasks.get(key, 0) != n)
    unexpected = sum(1 for key in tasks if key not in expected.tasks)
    if wrong or unexpected:
        notes.append(f"{wrong} task series short or over, {unexpected} unexpected")
    return lost, notes


def measure(
    scenario: str,
    kind: str,
    consumer: str,
    tasks: int,
    workers: int,
    names: int,
    unlimited: bool = True,
    watch_lag: bool = False,
    scrape_during: bool = False,
) -> Row:
    """Publish ``tasks`` tasks as one burst to a fresh consumer and measure it; with
    ``scrape_during``, ``/metrics`` is read in a loop while the exporter counts."""
    with _broker(kind, unlimited) as url:
        fleet = make_fleet(url, workers, names)
        publisher = BrokerPublisher(url)
        prepared = publisher.prepare(prepare_burst(fleet, tasks))
        expected = fleet.expected
        row = Row(scenario, kind, consumer, expected.task_events)
        log = LOGS / f"{scenario}-{kind}-{consumer}.log"
        proc: Exporter | BareReceiver = (
            BareReceiver(url, expected.total) if consumer == "bare" else Exporter(url, log)
        )
        try:
            lag_samples: list[float] = []
            stop_watch = threading.Event()
            if kind == "amqp":
                row.messages = len(prepared)
                watch_queue(url, row, stop_watch)
            before = proc.usage()
            if isinstance(proc, Exporter) and watch_lag:
                exporter = proc

                def watch() -> None:
                    while not stop_watch.wait(0.5):
                        value = exporter.scrape_value("celery_exporter_intake_lag_seconds")
                        if value is not None:
                            lag_samples.append(value)

                threading.Thread(target=watch, daemon=True).start()
            scrapes: list[float] = []
            counted_at: list[float] = []
            if isinstance(proc, Exporter) and (WATCH_COUNTING or scrape_during):
                scrape_loop(proc, expected, scrapes, counted_at, stop_watch)
            start = time.time()
            publisher.transmit(prepared)
            published = time.time()
            if isinstance(proc, BareReceiver):
                result = proc.result()
                done_at, counted = result["done_at"], int(result["count"])
                row.lost = expected.total - counted
                after = Usage(result["cpu_seconds"], result["peak_rss_mb"], 0.0)
                if not result["complete"]:
                    row.notes.append("stopped: disconnected, or 5 s without events")
            else:
                done_at = proc.wait_quiet()
                after = proc.usage()
            stop_watch.set()
            row.seconds = done_at - start
            row.rate = expected.task_events / row.seconds
            row.cpu_per_100k = (after.cpu_seconds - before.cpu_seconds) / expected.total * 1e5
            row.peak_rss_mb = after.peak_rss_mb
            if published - start > 0.5 * row.seconds:
                row.notes.append(f"publisher took {published - start:.2f} s")
            if isinstance(proc, Exporter):
                text, _ = proc.scrape()
                by_type, counted_tasks, row.series = parse_counts(text)
                row.lost, notes = _lost(expected, by_type, counted_tasks)
                row.notes += notes
                received = expected.events_by_type.get("task-received", 0)
                row.tasks_lost = max(0, received - int(by_type.get("task-received", 0)))
                if counted_at and not row.lost:
                    row.counted_s = counted_at[0] - start
                row.notes += [
                    note for note in (_history_notes(text), _recent_tasks_notes(text)) if note
                ]
                if scrapes and scrape_during:
                    row.slowest_scrape_s = max(scrapes)
                    row.notes.append(
                        f"{len(scrapes)} scrapes while counting, slowest "
                        f"{row.slowest_scrape_s:.3f} s"
                    )
                renders = [_scrape_as_prometheus(proc.url) for _ in range(3)]
                row.render_ms = statistics.median(renders) * 1000
                if lag_samples:
                    row.max_lag_s = max(lag_samples)
            if kind == "amqp":
                row.expired = expired_messages(url)
                peak = "n/a (exclusive queue)" if row.peak_ready is None else row.peak_ready
                left = {
                    n: m for n, (m, _) in vhost_queues(url).items() if n.startswith("celeryev.")
                }
                row.notes.append(
                    f"RabbitMQ: {row.expired} of {row.messages} messages expired, peak "
                    f"{peak} waiting in the queue, left after the run {sum(left.values())}"
                )
        finally:
            stop_watch.set()
            proc.stop()
            publisher.close()
    if row.lost:
        row.rate = 0.0  # a consumer that lost events has no meaningful rate
    return row


def _history_notes(text: str) -> str:
    """What the task history wrote and dropped, from a ``/metrics`` page (empty without one)."""
    pattern = (
        r"^celery_exporter_task_history_"
        r'(rows_written_total|dropped_total\{reason="buffer_full"\}) (\S+)$'
    )
    found = dict(re.findall(pattern, text, re.M))
    if not found:
        return ""
    written = int(float(found.get("rows_written_total", "0")))
    dropped = int(float(found.get('dropped_total{reason="buffer_full"}', "0")))
    return f"history: {written} rows written, {dropped} task events dropped (buffer full)"


def _recent_tasks_notes(text: str) -> str:
    """How many task events the recent-task store (``memory://``) let go unmerged, from a
    ``/metrics`` page (empty without the store): the scrapes merged the others, so the fewer
    and slower the scrapes, the less the store costs."""
    found = re.search(r"^celery_exporter_recent_task_events_dropped_total (\S+)$", text, re.M)
    if found is None:
        return ""
    return f"recent tasks: {int(float(found.group(1)))} task events left unmerged"


WATCH_COUNTING = True
"""Read ``/metrics`` in a loop while the exporter counts, to time the counting apart from the
history's writes (``--no-watch-counting``: the scrapes cost the exporter some CPU, and with
``memory://`` each one merges the recent-task store's window)."""
SCRAPE_PAUSE = 0.1
"""Seconds between two scrapes of the loop (the end of a run is found by the exporter going
idle, which back-to-back scrapes would never let it be)."""


def scrape_loop(
    exporter: Exporter,
    expected: Expected,
    timings: list[float],
    counted_at: list[float],
    stop: threading.Event,
) -> None:
    """Read ``/metrics`` as Prometheus asks for it, in a loop, from now until the exporter has
    counted every event of the run (then its time goes to ``counted_at``) or its counts stop
    moving (events lost); each request's seconds go to ``timings``."""
    pattern = re.compile(r'^celery_exporter_events_total\{type="([^"]+)"\} (\S+)$', re.M)
    target = dict(expected.events_by_type)

    def loop() -> None:
        last, still = -1.0, 0
        while not stop.wait(SCRAPE_PAUSE):
            started = time.perf_counter()
            try:
                text = _scrape_text_as_prometheus(exporter.url)
            except requests.RequestException:
                continue
            at = time.time()
            timings.append(time.perf_counter() - started)
            counts = {kind: float(n) for kind, n in pattern.findall(text)}
            if all(counts.get(kind, 0.0) >= n for kind, n in target.items()):
                counted_at.append(at)
                return
            counted = sum(counts.values())
            still = still + 1 if counted == last and counted > 0 else 0
            if still >= 5:
                return
            last = counted

    threading.Thread(target=loop, daemon=True).start()


def watch_queue(url: str, row: Row, stop: threading.Event) -> None:
    """Sample the ready messages of the consumer's event queue (the only ``celeryev.*`` queue in
    the private vhost) until ``stop``; the peak goes to ``row.peak_ready``."""
    names = [name for name in vhost_queues(url) if name.startswith("celeryev.")]
    if len(names) != 1:
        raise RuntimeError(f"expected one event queue, found {names}")
    queue_watch = QueueWatch(url, names[0])
    try:
        row.peak_ready = queue_watch.depth()
    except ResourceLocked:
        # Celery's own receiver declares its queue exclusive (event_queue_exclusive): no other
        # connection may look at it; the dead-letter count still covers it.
        queue_watch.__exit__()
        row.peak_ready = None
        return

    def sample() -> None:
        with queue_watch:
            while not stop.wait(0.1):
                row.peak_ready = max(row.peak_ready or 0, queue_watch.depth())

    threading.Thread(target=sample, daemon=True).start()


def million_tasks(kind: str, tasks: int, workers: int, names: int) -> Row:
    """``tasks`` tasks in slices through one exporter: RSS after each quarter, exact counts."""
    with _broker(kind, True) as url:
        fleet = make_fleet(url, workers, names)
        publisher = BrokerPublisher(url)
        exporter = Exporter(url, LOGS / f"rss-{kind}.log")
        row = Row("1M-tasks-rss", kind, "exporter", 0)
        try:
            before = exporter.usage()
            fleet.worker_event("worker-online")
            publisher.send(fleet.take())
            step = max(1, tasks // 20)
            quarter = max(1, tasks // 4)
            done = 0
            rss: list[str] = []
            start = time.time()
            while done < tasks:
                fleet.run_tasks(min(step, tasks - done))
                done += min(step, tasks - done)
                if done == tasks:
                    fleet.flush()
                publisher.send(fleet.take())
                if done % quarter == 0 or done == tasks:
                    exporter.wait_quiet(quiet=0.5)
                    rss.append(f"{done // 1000}k: {exporter.usage().rss_mb:.0f} MB")
            fleet.worker_event("worker-heartbeat")
            publisher.send(fleet.take())
            done_at = exporter.wait_quiet()
            after = exporter.usage()
            text, _ = exporter.scrape()
            by_type, counted, row.series = parse_counts(text)
            row.lost, notes = _lost(fleet.expected, by_type, counted)
            row.task_events = fleet.expected.task_events
            row.seconds = done_at - start
            row.cpu_per_100k = (after.cpu_seconds - before.cpu_seconds) / fleet.expected.total * 1e5
            row.peak_rss_mb = after.peak_rss_mb
            row.notes += ["RSS " + ", ".join(rss), "rate bound by the publisher", *notes]
        finally:
            exporter.stop()
            publisher.close()
    return row


def overload(tasks: int, budget: str | None) -> Row:
    """A burst far faster than the exporter counts, on Redis without an output-buffer limit (so
    nothing but the exporter bounds what waits): peak RSS with the intake byte budget ``budget``
    (None: the default), and every event either counted or in a counted drop."""
    scenario = f"overload-budget-{budget or 'default'}"
    with _broker("redis", True) as url:
        fleet = make_fleet(url, 8, 10)
        publisher = BrokerPublisher(url)
        prepared = publisher.prepare(prepare_burst(fleet, tasks))
        args = ("--max-intake-backlog-bytes", str(parse_size(budget))) if budget else ()
        exporter = Exporter(url, LOGS / f"{scenario}.log", *args)
        row = Row(scenario, "redis", "exporter", fleet.expected.task_events)
        try:
            before = exporter.usage()
            start = time.time()
            publisher.transmit(prepared)
            done_at = exporter.wait_quiet()
            after = exporter.usage()
            text, _ = exporter.scrape()
            by_type, counted, row.series = parse_counts(text)
            row.lost, _notes = _lost(fleet.expected, by_type, counted)
            dropped = exporter.scrape_value(
                'celery_exporter_events_dropped_total{reason="intake_budget"}'
            )
            row.seconds = done_at - start
            row.cpu_per_100k = (after.cpu_seconds - before.cpu_seconds) / fleet.expected.total * 1e5
            row.peak_rss_mb = after.peak_rss_mb
            row.notes.append(
                f"{len(prepared)} messages, {fleet.expected.total} events; "
                f"{int(dropped or 0)} messages dropped at the budget"
            )
        finally:
            exporter.stop()
            publisher.close()
    return row


def purge(workers: int) -> Row:
    """A fleet of ``workers`` workers, two tasks each, stops cleanly; the exporter purges them a
    second after their goodbyes while it is scraped every 0.2 s. ``render_ms`` is the slowest
    scrape until every worker was gone: the purge must not hold a scrape for long."""
    scenario = f"purge-{workers}-workers"
    with _broker("redis", True) as url:
        fleet = make_fleet(url, workers, 2)
        publisher = BrokerPublisher(url)
        exporter = Exporter(
            url, LOGS / f"{scenario}.log",
            "--purge-stopped-worker-after", "1", "--max-workers", str(2 * workers),
        )  # fmt: skip
        try:
            publisher.send(prepare_burst(fleet, 2 * workers))
            row = Row(scenario, "redis", "exporter", fleet.expected.task_events)
            exporter.wait_quiet()
            text, _ = exporter.scrape()
            by_type, counted, row.series = parse_counts(text)
            row.lost, row.notes = _lost(fleet.expected, by_type, counted)
            fleet.worker_event("worker-offline")
            publisher.send(fleet.take())
            timings: list[float] = []
            deadline = time.monotonic() + 120
            while "\ncelery_worker_online{" in text:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{workers} workers not purged in 120 s")
                time.sleep(0.2)
                text, seconds = exporter.scrape()
                timings.append(seconds)
            row.render_ms = max(timings) * 1000
            row.notes.append(
                f"{len(timings)} scrapes until all {workers} workers were purged, the slowest "
                f"{row.render_ms:.0f} ms"
            )
        finally:
            exporter.stop()
            publisher.close()
    return row


def parse_size(text: str) -> int:
    """``32MiB`` -> bytes."""
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text.removesuffix(unit)) * factor)
    return int(text)


def _scrape_as_prometheus(url: str) -> float:
    """Seconds for one /metrics request as Prometheus 2.x makes it: OpenMetrics, gzipped."""
    start = time.perf_counter()
    _scrape_text_as_prometheus(url)
    return time.perf_counter() - start


def _scrape_text_as_prometheus(url: str) -> str:
    response = requests.get(
        f"{url}/metrics",
        headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"},
        timeout=120,
    )
    response.raise_for_status()
    return response.text


Scenario = Callable[[float, int], Iterator[Row]]
"""(scale, round) -> rows"""


def _pair(round_: int) -> tuple[str, str]:
    # The machine's speed drifts between runs: alternate which consumer goes first.
    return ("bare", "exporter") if round_ % 2 else ("exporter", "bare")


def _throughput(kind: str) -> Scenario:
    def run(scale: float, round_: int) -> Iterator[Row]:
        tasks = int(100_000 * scale)
        for consumer in _pair(round_):
            yield measure(f"{kind}-throughput", kind, consumer, tasks, 8, 10)

    return run


def _burst(scale: float, round_: int) -> Iterator[Row]:
    tasks = int(200_000 * scale) // 3  # 200 k task events
    for consumer in _pair(round_):
        yield measure("redis-burst-default-limits", "redis", consumer, tasks, 8, 10,
                      unlimited=False, watch_lag=consumer == "exporter")  # fmt: skip


BURST_1M_TASKS = 327_868
"""Tasks of issue 17's burst: with their worker events, 1 M events from 4 workers x 10 names."""


def _burst_1m(scale: float, round_: int) -> Iterator[Row]:
    """Issue 17's burst: 1 M events published as fast as the publisher can to a Redis without a
    pub/sub buffer limit, the exporter at default settings and the bare receiver in turn, the
    exporter scraped in a loop while it counts."""
    for consumer in _pair(round_):
        yield measure("redis-burst-1m", "redis", consumer, int(BURST_1M_TASKS * scale), 4, 10,
                      scrape_during=consumer == "exporter")  # fmt: skip


def _cardinality(scale: float, round_: int) -> Iterator[Row]:
    # 20 k tasks on 20 k distinct (task, worker) pairs of 200 x 500: ~820 k series.
    yield measure("high-cardinality-200x500", "redis", "exporter", int(20_000 * scale), 200, 500)


def _series_50k(scale: float, round_: int) -> Iterator[Row]:
    # 40 workers x 30 names = 1200 (task, worker) pairs, ~41 series each: about 50 k series.
    yield measure("render-50k-series", "redis", "exporter", 12_000, 40, 30)


def _million(scale: float, round_: int) -> Iterator[Row]:
    yield million_tasks("redis", int(1_000_000 * scale), 8, 10)


def _overload(scale: float, round_: int) -> Iterator[Row]:
    # 300 k tasks: 900 k task events, ~230 MB of envelopes, published in ~1-2 s.
    for budget in ("32MiB", None):
        yield overload(int(300_000 * scale), budget)


def _purge(scale: float, round_: int) -> Iterator[Row]:
    yield purge(max(100, int(5000 * scale)))


SCENARIOS: dict[str, Scenario] = {
    "redis-throughput": _throughput("redis"),
    "amqp-throughput": _throughput("amqp"),
    "redis-burst": _burst,
    "redis-burst-1m": _burst_1m,
    "high-cardinality": _cardinality,
    "render-50k-series": _series_50k,
    "1m-tasks": _million,
    "overload": _overload,
    "purge": _purge,
}


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | broker | consumer | task events | task events/s | x bare | counted ev/s "
        "| CPU s/100k ev | peak RSS MB | lost | /metrics ms (series) | max lag s | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bare = {(r.scenario, r.broker, r.round): r.rate for r in rows if r.consumer == "bare"}
    for r in rows:
        base = bare.get((r.scenario, r.broker, r.round))
        ratio = f"{r.rate / base:.2f}" if base and r.rate and r.consumer != "bare" else ""
        render = f"{r.render_ms:.0f} ({r.series})" if r.render_ms is not None else ""
        lag = f"{r.max_lag_s:.1f}" if r.max_lag_s is not None else ""
        rate = f"{r.rate / 1000:.1f} k" if r.rate else "—"
        counted = f"{r.task_events / r.counted_s / 1000:.1f} k" if r.counted_s else ""
        scenario = r.scenario if r.round == 1 else f"{r.scenario} ({r.round})"
        lines.append(
            f"| {scenario} | {r.broker} | {r.consumer} | {r.task_events} | {rate} | {ratio} "
            f"| {counted} | {r.cpu_per_100k:.2f} | {r.peak_rss_mb:.0f} | {r.lost} | {render} "
            f"| {lag} "
            f"| {'; '.join(r.notes)} |"
        )
    return "\n".join(lines)


def ratios(rows: list[Row]) -> str:
    """Per scenario with a bare baseline: the exporter's rate and CPU per event against the bare
    receiver's of the same round, over every round."""
    pairs: dict[tuple[str, str], list[tuple[Row, Row]]] = {}
    by_round = {(r.scenario, r.broker, r.round, r.consumer): r for r in rows}
    for (scenario, broker, round_, consumer), row in by_round.items():
        bare = by_round.get((scenario, broker, round_, "bare"))
        if consumer == "exporter" and bare is not None:
            pairs.setdefault((scenario, broker), []).append((bare, row))
    lines = [
        "| scenario | rounds | x bare (rate): median [min-max] | x bare (counting rate) "
        "| x bare (CPU per event): median [min-max] |",
        "|---|---|---|---|---|",
    ]

    def spread(values: list[float]) -> str:
        if not values:
            return ""
        values = sorted(values)
        return f"{statistics.median(values):.2f} [{values[0]:.2f}-{values[-1]:.2f}]"

    for (scenario, _), found in pairs.items():
        rate = [e.rate / b.rate for b, e in found if b.rate and e.rate]
        counting = [
            e.task_events / e.counted_s / b.rate for b, e in found if b.rate and e.counted_s
        ]
        cpu = [b.cpu_per_100k / e.cpu_per_100k for b, e in found if e.cpu_per_100k]
        if not rate or not cpu:
            continue
        lines.append(
            f"| {scenario} | {len(found)} | {spread(rate)} | {spread(counting)} | {spread(cpu)} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def burst_summary(rows: list[Row]) -> str:
    """Issue 17's targets over the rounds of ``redis-burst-1m``: per consumer, the median rate
    and CPU per 100 k events, and the worst tasks lost, peak RSS and slowest scrape."""
    lines = [
        "| consumer | rounds | task events/s (median) | CPU s/100k ev (median) | tasks lost (max) "
        "| events lost (max) | peak RSS MB (max) | slowest scrape s (max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for consumer in ("bare", "exporter"):
        found = [r for r in rows if r.scenario == "redis-burst-1m" and r.consumer == consumer]
        if not found:
            continue
        rates = [r.seconds and r.task_events / r.seconds for r in found]
        scrapes = [r.slowest_scrape_s for r in found if r.slowest_scrape_s is not None]
        tasks_lost = [r.tasks_lost for r in found if r.tasks_lost is not None]
        lines.append(
            f"| {consumer} | {len(found)} | {statistics.median(rates) / 1000:.1f} k "
            f"| {statistics.median(r.cpu_per_100k for r in found):.2f} "
            f"| {max(tasks_lost) if tasks_lost else ''} | {max(r.lost for r in found)} "
            f"| {max(r.peak_rss_mb for r in found):.0f} "
            f"| {f'{max(scrapes):.3f}' if scrapes else ''} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="celery-events-exporter benchmark")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply run sizes")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the scenarios this many rounds (ratios per round)",
    )
    parser.add_argument(
        "--no-watch-counting",
        action="store_true",
        help="do not read /metrics while the exporter counts (no counted ev/s)",
    )
    args = parser.parse_args(argv)
    global WATCH_COUNTING
    WATCH_COUNTING = not args.no_watch_counting
    names = args.only.split(",")
    unknown = sorted(set(names) - SCENARIOS.keys())
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    LOGS.mkdir(exist_ok=True)
    rows: list[Row] = []
    print(f"# load average before: {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    for round_ in range(1, args.repeat + 1):
        for name in names:
            for row in SCENARIOS[name](args.scale, round_):
                row.round = round_
                rows.append(row)
                print(json.dumps(asdict(row)), flush=True)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")
    print(table(rows))
    for summary in (ratios(rows), burst_summary(rows)):
        if summary:
            print()
            print(summary)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
