"""The task history end to end: real exporters, real prefork workers, real SQLite files and
PostgreSQL databases (a private cluster where the database goes away)."""

from __future__ import annotations

import signal
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testkit.postgres import PrivatePostgres
from tests.conftest import ExporterProcess, Processes, client, wait_until

pytestmark = pytest.mark.integration

WORKER = "w1@history"
WRITTEN = "celery_exporter_task_history_rows_written_total"


def rows(exporter: ExporterProcess, **params: str) -> list[dict[str, Any]]:
    response = exporter.get("/api/tasks", {"limit": "1000", **params})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def settled(
    exporter: ExporterProcess, ids: list[str], state: str = "SUCCESS", timeout: float = 40
) -> list[dict[str, Any]]:
    """Wait until the history holds every task of ``ids`` in ``state``."""

    def done() -> list[dict[str, Any]]:
        found = [r for r in rows(exporter) if r["uuid"] in ids and r["state"] == state]
        return found if len(found) == len(ids) else []

    return wait_until(done, timeout=timeout, what=f"{len(ids)} tasks {state} in the history")


def send(broker_url: str, count: int, name: str = "tests.add") -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with client(broker_url) as app:
        for i, task_id in enumerate(ids):
            app.send_task(name, args=(i, i), task_id=task_id)
    return ids


def test_history_survives_a_restart_with_default_settings(
    redis_url: str, processes: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "state"
    first = processes.exporter(redis_url, "--data-dir", str(data_dir))
    processes.worker(redis_url, WORKER)
    ids = send(redis_url, 5)
    before = sorted(settled(first, ids), key=lambda r: r["uuid"])
    assert {r["name"] for r in before} == {"tests.add"}
    assert {r["worker"] for r in before} == {WORKER}
    assert {r["args"] for r in before} == {None}  # payloads hidden: never written
    first.stop()
    assert (data_dir / "tasks.sqlite3").is_file()

    second = processes.exporter(
        redis_url, "--data-dir", str(data_dir), "--tasks.search-scan-rows", "2"
    )
    after = sorted([r for r in rows(second) if r["uuid"] in ids], key=lambda r: r["uuid"])
    assert after == before

    # Keyset paging over HTTP: each page's X-Next-Page is the next one's after=.
    seen: list[str] = []
    params = {"limit": "2"}
    while True:
        page = second.get("/api/tasks", params)
        assert page.status_code == 200, page.text
        seen += [r["uuid"] for r in page.json()]
        if "X-Next-Page" not in page.headers:
            break
        params = {"limit": "2", "after": page.headers["X-Next-Page"]}
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    # Free text reads 2 rows a page here: short pages that say so, the same 5 tasks in order.
    scanned: list[tuple[int, str | None]] = []
    found: list[str] = []
    params = {"search": "tests.add", "limit": "10"}
    while True:
        page = second.get("/api/tasks", params)
        assert page.status_code == 200, page.text
        scanned.append((len(page.json()), page.headers.get("X-Tasks-Scanned")))
        found += [r["uuid"] for r in page.json()]
        if "X-Next-Page" not in page.headers:
            break
        params = {"search": "tests.add", "limit": "10", "after": page.headers["X-Next-Page"]}
    assert scanned == [(2, "2"), (2, "2"), (1, None)]
    assert found == seen
    assert rows(second, search="name:tests.add -state:SUCCESS") == []
    assert len(rows(second, search=f"worker:{WORKER} state:success")) == 5
    refused = second.get("/api/tasks", {"search": "kwargs:nokey"})
    assert refused.status_code == 400
    assert refused.json() == {"error": "kwargs terms are kwargs:key=value, got 'kwargs:nokey'"}


def test_two_exporters_on_one_postgresql_database_write_one_row_per_task(
    redis_url: str, processes: Processes, postgres_url: str
) -> None:
    # Trust auth ignores the password; the log must not show it.
    store = ("--tasks.store", postgres_url.replace("postgres@", "postgres:n0t-logged@"))
    first = processes.exporter(redis_url, *store)
    second = processes.exporter(redis_url, *store)
    processes.worker(redis_url, WORKER)
    ids = send(redis_url, 40)
    settled(first, ids)
    wait_until(
        lambda: min(first.metrics().get(WRITTEN) or 0, second.metrics().get(WRITTEN) or 0) >= 40,
        what="both exporters wrote every task",
    )
    time.sleep(2)  # a last flush window of either
    with psycopg.connect(postgres_url) as conn:
        counted = conn.execute(
            "SELECT count(*), count(DISTINCT uuid), min(state), max(state) FROM celery_tasks"
        ).fetchone()
    assert counted == (40, 40, "SUCCESS", "SUCCESS")
    assert rows(first) == rows(second)
    assert "n0t-logged" not in first.log() + second.log()


def test_the_detail_of_a_retried_task_has_its_timeline(
    redis_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(redis_url, "--expose-task-payloads")
    processes.worker(redis_url, WORKER)
    task_id = str(uuid.uuid4())
    with client(redis_url) as app:
        app.send_task("tests.flaky_exc", args=(2,), task_id=task_id)
    settled(exporter, [task_id])
    response = exporter.get(f"/api/tasks/{task_id}")
    assert response.status_code == 200, response.text
    detail = response.json()
    assert (detail["state"], detail["retries"], detail["exception_type"], detail["result"]) == (
        "SUCCESS", 2, "OSError", "2",
    )  # fmt: skip
    assert detail["exception"] == "OSError('flaky disk')"
    timeline = [(e["type"], e["worker"], e["retries"]) for e in detail["events"]]
    sent = [e for e in timeline if e[0] == "task-sent"]
    # A retry is published again, by the worker: one task-sent per attempt.
    assert [r for _, _, r in sent] == [0, 1, 2]
    assert detail["client"] == sent[-1][1]
    assert sorted(e for e in timeline if e[0] != "task-sent") == sorted(
        [("task-received", WORKER, n) for n in range(3)]
        + [("task-started", WORKER, None)] * 3
        + [("task-retried", WORKER, None)] * 2
        + [("task-succeeded", WORKER, None)],
        key=str,
    )
    assert all(e["timestamp"].endswith("Z") for e in detail["events"])
    assert (detail["root"]["uuid"], detail["parent"], detail["children"]) == (task_id, None, [])
    assert detail["queue"] == "celery" and detail["routing_key"] == "celery"
    assert exporter.get(f"/api/tasks/{uuid.uuid4()}").status_code == 404


def test_reject_reads_failure_with_the_rejection_kept(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(redis_url)
    processes.worker(redis_url, WORKER)
    task_id = str(uuid.uuid4())
    with client(redis_url) as app:
        app.send_task("tests.reject", task_id=task_id)
    [row] = settled(exporter, [task_id], "FAILURE")
    assert row["exception_type"] == "Reject"
    assert row["rejected"] is not None and row["failed"] is not None


def test_a_kill_9_mid_burst_leaves_a_sound_file_and_loses_at_most_the_window(
    redis_url: str, processes: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "state"
    exporter = processes.exporter(redis_url, "--data-dir", str(data_dir))
    processes.worker(redis_url, WORKER, concurrency=4)
    ids = send(redis_url, 300)
    wait_until(
        lambda: (exporter.metrics().get(WRITTEN) or 0) > 0,
        what="the first rows written",
    )
    written_before = exporter.metrics().get("celery_exporter_task_history_rows_written_total")
    exporter.stop(signal.SIGKILL)
    database = data_dir / "tasks.sqlite3"
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = conn.execute("SELECT count(*) FROM celery_tasks").fetchone()[0]
    # Every write the exporter reported before the kill is in the file.
    assert stored >= 1 and written_before is not None and stored <= 300
    again = processes.exporter(redis_url, "--data-dir", str(data_dir))
    assert len([r for r in rows(again) if r["uuid"] in ids]) == stored
    # The restarted exporter writes into the recovered file (the client's task-sent events are
    # enough to show it: the worker's may still sit in its event buffer).
    more = send(redis_url, 5)
    wait_until(
        lambda: {r["uuid"] for r in rows(again)} >= set(more), what="new tasks in the history"
    )


def test_postgresql_stopped_and_restarted_under_load(
    redis_url: str, processes: Processes, private_postgres: PrivatePostgres
) -> None:
    private_postgres.start()
    url = private_postgres.server_url
    exporter = processes.exporter(redis_url, "--tasks.store", url)
    processes.worker(redis_url, WORKER)
    first = send(redis_url, 20)
    settled(exporter, first)
    private_postgres.stop()
    during = send(redis_url, 60)
    wait_until(
        lambda: (
            exporter.metrics().get("celery_task_succeeded_total", worker=WORKER, task="tests.add")
            == 80.0
        ),
        timeout=40,
        what="counting goes on while the database is down",
    )
    metrics = exporter.metrics()
    assert metrics.get("celery_exporter_task_history_buffer_bytes") > 0  # type: ignore[operator]
    assert exporter.get("/api/workers").status_code == 200
    # The history cannot be read meanwhile: the API says so, and when to ask again.
    for path, label in (("/api/tasks", "/api/tasks"), (f"/api/tasks/{first[0]}", "other")):
        answer = exporter.get(path)
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "1"
        assert answer.json()["error"].startswith("the task history's database does not answer")
        assert exporter.metrics().get("celery_exporter_http_errors_total", path=label) == 1.0
    wait_until(
        lambda: (
            (exporter.metrics().get("celery_exporter_task_history_write_errors_total") or 0) > 0
        ),
        what="a failed write counted",
    )
    private_postgres.start()
    settled(exporter, during, timeout=60)  # the writer retries every 10 s at most
    metrics = exporter.metrics()
    assert metrics.get("celery_exporter_task_history_dropped_total", reason="buffer_full") == 0
    assert metrics.get("celery_exporter_task_history_buffer_bytes") == 0
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM celery_tasks").fetchone() == (80,)
