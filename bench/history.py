"""The task history's own numbers: write rate into SQLite and PostgreSQL, query latency, size.

``write``: T tasks of 5 events each (sent, received, started, retried, succeeded or failed),
published as JSON lists of up to 24 events (a prefork worker's ``task.multi``), handed at a given
rate to the exporter's ingest path (``Decoder.handle_batch``: decoded, counted by the state,
whose batches go to the history's sink) while the writer thread writes at default settings; the
clock runs from the first message to the last row committed, and nothing may be dropped.
Reports tasks/s, the CPU of the whole process and of the writer thread alone (PostgreSQL on this
machine: and of the database's backends), rows dropped, the writer's peak buffer, the process's
peak RSS and the bytes per million tasks.

``after-burst``: the writer's flush after a burst, in process: T tasks handed to the ingest path
with the writer thread not running (as in a burst, when it yields to the counting), so that its
buffer fills to the budget (the rest dropped), then one ``flush``; reports the RSS before it and
the peak RSS during it (``VmHWM`` reset through ``/proc/self/clear_refs``), and its CPU.

``query``: fills ``celery_tasks`` with N rows (PostgreSQL: ``generate_series`` in the server;
SQLite: a recursive CTE) spread over 7 days, then times R runs of each search: by uuid,
name + state in the last hour (a 100-row page), free text (a 100-row page; SQLite: within the
default ``--tasks.search-scan-rows``, as /api/tasks reads it), free text that is a uuid's start,
free text matching nothing (with and without that budget); prints p50/p95.

    python -m bench.history write --store sqlite --tasks 200000 --rate 10000
    python -m bench.history write --store postgresql --tasks 200000 --rate 20000
    python -m bench.history write --store sqlite --tasks 200000 --rate 1000000 --budget-mib 4096
    python -m bench.history after-burst --store sqlite --tasks 100000
    python -m bench.history query --store postgresql --rows 10000000
    python -m bench.history query --store sqlite --rows 10000000

PostgreSQL runs use a database of their own on 127.0.0.1:5432, dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import tempfile
import threading
import time
import uuid as uuids
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from celery_events_exporter.app import build_state, settle
from celery_events_exporter.config import Config
from celery_events_exporter.decoder import Decoder
from celery_events_exporter.history.collector import HistoryCollector
from celery_events_exporter.history.postgres import PostgresStore
from celery_events_exporter.history.search import parse
from celery_events_exporter.history.sql import HistoryQuery
from celery_events_exporter.history.sqlite import SqliteStore
from celery_events_exporter.history.store import HistoryStore, Retention
from celery_events_exporter.history.wiring import History
from celery_events_exporter.history.writer import HistoryWriter
from celery_events_exporter.intake.backlog import IntakeBacklog
from celery_events_exporter.intake.message import RawMessage
from testkit.postgres import database

NAMES = [f"app.tasks.job_{i:02d}" for i in range(30)]
WORKERS = [f"celery@worker-{i:02d}" for i in range(20)]
STATES_END = ("task-succeeded",) * 9 + ("task-failed",)


@contextmanager
def opened(kind: str) -> Iterator[HistoryStore]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="cee-history-bench-") as directory:
            store = SqliteStore(str(Path(directory) / "tasks.sqlite3"))
            store.migrate()
            yield store
            store.close()
        return
    with database("cee_bench") as url:
        pg = PostgresStore(url)
        pg.open()
        pg.migrate()
        try:
            yield pg
        finally:
            pg.close()


def task_events(index: int, at: float) -> list[dict[str, Any]]:
    uuid = str(uuids.UUID(int=random.getrandbits(128)))
    name, worker = NAMES[index % len(NAMES)], WORKERS[index % len(WORKERS)]
    end = STATES_END[index % len(STATES_END)]
    events: list[tuple[str, float, str, dict[str, object]]] = [
        ("task-sent", at, "client@web-1", {"name": name, "queue": "celery", "retries": 0}),
        ("task-received", at + 0.001, worker, {"name": name, "retries": 0, "args": "(1, 2)",
                                               "kwargs": "{'user': 42}"}),
        ("task-started", at + 0.002, worker, {}),
        ("task-retried", at + 0.003, worker, {"exception": "OSError('disk')"}),
        (end, at + 0.010, worker, {"runtime": 0.008, "result": "3",
                                   "exception": "ValueError('bad')"}),
    ]  # fmt: skip
    return [
        {"type": kind, "uuid": uuid, "timestamp": moment, "hostname": host, **fields}
        for kind, moment, host, fields in events
    ]


def messages(tasks: int) -> list[bytes]:
    """The tasks' events as JSON lists of 24, interleaved as a busy fleet's (the events of ~100
    tasks in flight at once)."""
    events: list[dict[str, Any]] = []
    start_at = time.time() - 3600
    for i in range(tasks):
        events.extend(task_events(i, start_at + i * 0.0001))
    window = 500
    order = [
        e for s in range(0, len(events), window)
        for e in random.sample(events[s : s + window], len(events[s : s + window]))
    ]  # fmt: skip
    return [orjson.dumps(order[s : s + 24]) for s in range(0, len(order), 24)]


def thread_cpu(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def server_cpu(store: HistoryStore) -> dict[int, float]:
    """PostgreSQL on this machine: the CPU seconds of each of the database's client backends
    (``/proc``), by process id; nothing for SQLite (its CPU is the process's)."""
    if not isinstance(store, PostgresStore):
        return {}
    with store.pool.connection() as conn:
        pids = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend'"
        ).fetchall()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for (pid,) in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return cpu


def wired(store: HistoryStore, budget: int) -> tuple[HistoryWriter, Decoder]:
    """The exporter's ingest path into ``store``: a writer of ``budget`` bytes with nothing
    expired (every row written stays for the count), and the decoder that feeds it through the
    state. The writer's thread is not started: the caller runs or flushes it."""
    writer = HistoryWriter(store, None, budget_bytes=budget, retention=Retention(0, 0, 0))
    state = build_state(Config(), None, History(store, writer, HistoryCollector(writer)))
    return writer, Decoder(state, IntakeBacklog())


def write(kind: str, tasks: int, rate: int, budget: int) -> None:
    bodies = messages(tasks)
    with opened(kind) as store:
        writer, decoder = wired(store, budget)
        settle()  # the garbage collector's settings, as the exporter runs
        stop = threading.Event()
        thread = threading.Thread(target=writer.run, args=(stop,), daemon=True)
        thread.start()
        writer.ready.wait()
        peak_buffer = 0
        cpu_began, writer_began = time.process_time(), thread_cpu(thread)
        server_began = server_cpu(store)
        began = time.perf_counter()
        # At ``rate`` tasks/s, 10 messages (48 tasks) at a time.
        step = 10
        per_step = step * 24 / (5 * rate)
        for n, s in enumerate(range(0, len(bodies), step)):
            delay = began + n * per_step - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            now = time.time()
            decoder.handle_batch(
                [RawMessage(now, "application/json", body) for body in bodies[s : s + step]]
            )
            peak_buffer = max(peak_buffer, writer.buffer_bytes)
        fed = time.perf_counter() - began
        while writer.buffer_bytes > 0 and writer.stats.dropped["buffer_full"] == 0:
            time.sleep(0.01)
            peak_buffer = max(peak_buffer, writer.buffer_bytes)
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu_began
        writer_cpu = thread_cpu(thread) - writer_began
        lag = elapsed - fed
        server = sum(t - server_began.get(pid, 0.0) for pid, t in server_cpu(store).items())
        server_text = (
            f", the server's backends {server:.2f} "
            f"({server / max(1, writer.stats.rows_written) * 1e6:.1f} µs per row)"
            if isinstance(store, PostgresStore)
            else ""
        )
        stop.set()
        thread.join()
        size = (
            store.used_bytes() if isinstance(store, SqliteStore) else _pg_bytes(store)  # type: ignore[arg-type]
        )
        dropped = sum(writer.stats.dropped.values())
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{kind}: {tasks} tasks x 5 events offered at {rate:,} tasks/s, fed in {fed:.2f} s, "
            f"all written {lag:.2f} s later: {tasks / elapsed:,.0f} tasks/s; the process took "
            f"{cpu:.2f} CPU s (ingest included), the writer thread {writer_cpu:.2f} "
            f"({writer_cpu / max(1, writer.stats.rows_written) * 1e6:.1f} µs per row written)"
            f"{server_text}; rows written {writer.stats.rows_written} (one per task and flush "
            "window), "
            f"dropped {dropped}, batches {writer.stats.batches}, peak buffer "
            f"{peak_buffer / 2**20:.1f} MiB, peak RSS {rss:.0f} MiB, "
            f"{size / tasks * 1e6 / 2**30:.2f} GiB per million tasks (indexes included)"
        )


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def after_burst(kind: str, tasks: int, budget: int) -> None:
    bodies = messages(tasks)
    with opened(kind) as store:
        writer, decoder = wired(store, budget)
        settle()
        now = time.time()
        for s in range(0, len(bodies), Decoder.BATCH):
            decoder.handle_batch(
                [RawMessage(now, "application/json", b) for b in bodies[s : s + Decoder.BATCH]]
            )
        del bodies
        buffered = writer.buffer_bytes
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status_mib("VmRSS")
        cpu_began = time.process_time()
        assert writer.flush()
        cpu = time.process_time() - cpu_began
        peak = _status_mib("VmHWM")
        print(
            f"{kind}: {tasks} tasks x 5 events, buffer {buffered / 2**20:.1f} MiB "
            f"({writer.stats.dropped['buffer_full']} task events dropped past it); the flush "
            f"wrote {writer.stats.rows_written} rows in {cpu:.2f} CPU s; RSS {before:.0f} MiB "
            f"before it, peak {peak:.0f} MiB during it (+{peak - before:.0f})"
        )


def _pg_bytes(store: PostgresStore) -> int:
    with store.pool.connection() as conn:
        row = conn.execute("SELECT pg_total_relation_size('celery_tasks')").fetchone()
    return int(row[0]) if row else 0


def fill(store: HistoryStore, rows: int, now: float) -> None:
    if isinstance(store, PostgresStore):
        with store.pool.connection() as conn:
            conn.execute(
                """
                INSERT INTO celery_tasks (uuid, name, state, worker, client, seen_at, updated_at,
                  sent, received, started, succeeded, runtime, retries, queue, events)
                SELECT md5(i::text), 'app.tasks.job_' || lpad((i %% 30)::text, 2, '0'),
                  CASE WHEN i %% 10 = 0 THEN 'FAILURE' ELSE 'SUCCESS' END,
                  'celery@worker-' || lpad((i %% 20)::text, 2, '0'), 'client@web-1',
                  to_timestamp(%s - (i::float8 / %s) * 604800),
                  to_timestamp(%s - (i::float8 / %s) * 604800 + 0.01),
                  to_timestamp(%s - (i::float8 / %s) * 604800),
                  to_timestamp(%s - (i::float8 / %s) * 604800 + 0.001),
                  to_timestamp(%s - (i::float8 / %s) * 604800 + 0.002),
                  to_timestamp(%s - (i::float8 / %s) * 604800 + 0.01),
                  0.008, 0, 'celery', '[]'
                FROM generate_series(1, %s) AS i
                """,
                (*(v for _ in range(6) for v in (now, rows)), rows),
            )
            conn.execute("ANALYZE celery_tasks")
        return
    if isinstance(store, SqliteStore):
        with store._writing() as conn:
            conn.execute(
                """
                WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?)
                INSERT INTO celery_tasks (uuid, name, state, worker, client, seen_at, updated_at,
                  sent, received, started, succeeded, runtime, retries, queue, events)
                SELECT printf('%016x%016x', (i * 2654435761) % 4294967296, i),
                  printf('app.tasks.job_%02d', i % 30),
                  CASE WHEN i % 10 = 0 THEN 'FAILURE' ELSE 'SUCCESS' END,
                  printf('celery@worker-%02d', i % 20), 'client@web-1',
                  ? - (i * 1.0 / ?) * 604800, ? - (i * 1.0 / ?) * 604800 + 0.01,
                  ? - (i * 1.0 / ?) * 604800, ? - (i * 1.0 / ?) * 604800 + 0.001,
                  ? - (i * 1.0 / ?) * 604800 + 0.002, ? - (i * 1.0 / ?) * 604800 + 0.01,
                  0.008, 0, 'celery', '[]'
                FROM s
                """,
                (rows, *(v for _ in range(6) for v in (now, rows))),
            )
            conn.execute("ANALYZE")
        return
    raise TypeError(f"no filling for {type(store).__name__}")


def query(kind: str, rows: int, runs: int) -> None:
    now = time.time()
    with opened(kind) as store:
        began = time.perf_counter()
        fill(store, rows, now)
        print(f"{kind}: filled {rows:,} rows in {time.perf_counter() - began:.0f} s")
        sample = [r.uuid for r in store.page(HistoryQuery(limit=1000))]
        scan_rows = Config().tasks_search_scan_rows
        cases: dict[str, Callable[[], object]] = {
            "by uuid": lambda: store.get(random.choice(sample)),
            "name + state, last hour, 100 rows": lambda: store.page(
                HistoryQuery(
                    terms=tuple(parse(f"name:{random.choice(NAMES)} state:FAILURE")),
                    since=now - 3600,
                    limit=100,
                )
            ),
            "free text, 100 rows": lambda: store.search(
                HistoryQuery(terms=tuple(parse("worker-07")), limit=100, scan_rows=scan_rows)
            ),
            "free text, the first 8 characters of a uuid": lambda: store.search(
                HistoryQuery(
                    terms=tuple(parse(random.choice(sample)[:8])), limit=100, scan_rows=scan_rows
                )
            ),
            # A term no row holds: PostgreSQL's trigram index finds nothing at once; SQLite
            # reads --tasks.search-scan-rows rows and stops short (the API's X-Next-Page).
            "free text matching nothing": lambda: store.search(
                HistoryQuery(terms=tuple(parse("no-such-text")), limit=100, scan_rows=scan_rows)
            ),
            "free text matching nothing, no scan budget": lambda: store.search(
                HistoryQuery(terms=tuple(parse("no-such-text")), limit=100)
            ),
        }
        for label, run in cases.items():
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                run()
                times.append((time.perf_counter() - t) * 1000)
            p95 = statistics.quantiles(times, n=20)[-1]
            print(f"  {label}: p50 {statistics.median(times):.2f} ms, p95 {p95:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("write", "after-burst", "query"))
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rate", type=int, default=20_000, help="tasks/s offered (write)")
    parser.add_argument(
        "--budget-mib",
        type=int,
        default=Config().tasks_buffer_bytes >> 20,
        help="the writer's buffer (write); a large one with a high --rate: the write rate when "
        "nothing is dropped",
    )
    args = parser.parse_args()
    random.seed(1)
    if args.mode == "write":
        write(args.store, args.tasks, args.rate, args.budget_mib << 20)
    elif args.mode == "after-burst":
        after_burst(args.store, args.tasks, args.budget_mib << 20)
    else:
        query(args.store, args.rows, args.runs)


if __name__ == "__main__":
    main()
