"""The history's dashboards on a real workload: every SQL panel runs on a PostgreSQL history
that a real exporter wrote from a real worker's tasks (Grafana's macros and variables
substituted as Grafana would), and every PromQL panel of the worker page answers from a real
Prometheus scraping that exporter."""

from __future__ import annotations

import math
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import yaml

from grafana import generate
from grafana.dashboards_src import (
    history_sql,
    history_table,
    recent_tasks,
    worker_page,
)
from grafana.dashboards_src import workers as workers_dashboard
from grafana.sql_macros import substitute
from testkit.ports import free_port
from tests.conftest import ExporterProcess, Processes, client, require_tool, wait_until

pytestmark = pytest.mark.integration

WORKER = "w1@views"
FAILED = 2
SUCCEEDED = 3


def _sql_targets(uid: str) -> Iterator[tuple[str, str]]:
    """(panel title, raw SQL) of every PostgreSQL query of a dashboard."""
    board = generate.dashboard_dict(uid)
    for panel in board["panels"]:
        for nested in [panel, *panel.get("panels", [])]:
            for target in nested.get("targets") or []:
                if target.get("datasource", {}).get("type") == history_sql.POSTGRES_TYPE:
                    yield str(nested["title"]), str(target["rawSql"])


def _sql(uid: str, title: str) -> str:
    [sql] = [s for t, s in _sql_targets(uid) if t == title]
    return sql


class History:
    def __init__(self, url: str, since: float) -> None:
        self.url = url
        self.since = since

    def run(self, sql: str, **variables: str) -> list[tuple[Any, ...]]:
        text = substitute(sql, variables, time_from=self.since, time_to=time.time() + 60)
        with psycopg.connect(self.url) as conn:
            return conn.execute(text.encode()).fetchall()


def _tasks_boxes(**given: str) -> dict[str, str]:
    boxes = {name: "" for name, _, _, _ in recent_tasks.SEARCH_VARIABLES}
    return {**boxes, **given}


@pytest.fixture
def workload(
    redis_url: str, processes: Processes, postgres_url: str
) -> tuple[ExporterProcess, History, dict[str, Any]]:
    since = time.time() - 5
    exporter = processes.exporter(
        redis_url,
        "--tasks.store",
        postgres_url,
        "--expose-task-payloads",
        "--worker-details-interval",
        "1",
    )
    worker = processes.worker(redis_url, WORKER)
    ids: dict[str, Any] = {"worker_process": worker}
    with client(redis_url) as app:
        ids["succeeded"] = [
            app.send_task("tests.add", kwargs={"x": i, "y": i}, task_id=str(uuid.uuid4())).id
            for i in range(SUCCEEDED)
        ]
        ids["failed"] = [
            app.send_task("tests.fail", (f"disk {i}",), task_id=str(uuid.uuid4())).id
            for i in range(FAILED)
        ]
        ids["retried"] = app.send_task("tests.flaky_exc", (2,), task_id=str(uuid.uuid4())).id
        chain = app.signature("tests.add", (1, 2)) | app.signature("tests.add", (10,))
        result = chain.apply_async()
        ids["chain_child"] = result.id
        ids["chain_parent"] = result.parent.id

    everything = [*ids["succeeded"], *ids["failed"], ids["retried"], ids["chain_parent"],
                  ids["chain_child"]]  # fmt: skip

    def settled() -> bool:
        with psycopg.connect(postgres_url) as conn:
            found = conn.execute("SELECT uuid, state FROM celery_tasks").fetchall()
        states: dict[str, str] = {str(u): str(s) for u, s in found}
        done = {u for u in everything if states.get(u) in ("SUCCESS", "FAILURE")}
        return done == set(everything) and all(states[u] == "FAILURE" for u in ids["failed"])

    wait_until(settled, timeout=60, what="every task's end in the PostgreSQL history")
    return exporter, History(postgres_url, since), ids


def test_every_sql_panel_runs_and_returns_the_workloads_rows(
    workload: tuple[ExporterProcess, History, dict[str, Any]],
) -> None:
    _, history, ids = workload
    table = history_table.sql()
    uuid_column = [c for c, _ in history_sql.HISTORY_TABLE_COLUMNS].index("uuid")
    state_column = [c for c, _ in history_sql.HISTORY_TABLE_COLUMNS].index("state")

    def uuids(**boxes: str) -> list[str]:
        return [row[uuid_column] for row in history.run(table, **_tasks_boxes(**boxes))]

    everything = {*ids["succeeded"], *ids["failed"], ids["retried"], ids["chain_parent"],
                  ids["chain_child"]}  # fmt: skip
    rows = history.run(table, **_tasks_boxes())
    assert {row[uuid_column] for row in rows} == everything
    seen = [row[0] for row in rows]
    assert seen == sorted(seen, reverse=True)  # newest first
    # Flower's search and the State box: exactly the failed tasks.
    assert sorted(uuids(task_search="state:FAILURE")) == sorted(ids["failed"])
    assert sorted(uuids(task_state="failure")) == sorted(ids["failed"])
    assert sorted(uuids(task_search="-state:FAILURE")) == sorted(everything - set(ids["failed"]))
    assert sorted(uuids(task_search="exception:ValueError")) == sorted(ids["failed"])
    assert sorted(uuids(task_search="disk name:tests.fail")) == sorted(ids["failed"])
    assert uuids(task_search="name:tests.flaky*") == [ids["retried"]]
    assert uuids(task_search="kwargs:y=2") == [ids["succeeded"][2]]
    assert uuids(task_search="kwargs:y=7") == []
    assert uuids(task_uuid=ids["retried"][:8]) == [ids["retried"]]
    assert sorted(uuids(task_worker="W1@VIEWS")) == sorted(everything)
    assert uuids(task_name="no-such-task") == []
    # A quote in a box is text, not SQL.
    assert uuids(task_search="x' OR '1'='1") == []
    assert uuids(task_search="\\' OR true --") == []
    assert uuids(task_name="\\") == []
    assert {row[state_column] for row in rows} == {"SUCCESS", "FAILURE"}

    # The task page: one row for a known uuid, its exception, its timeline, its children.
    page = history_sql.TASK_PAGE_UID
    [row] = history.run(_sql(page, "Task"), uuid=ids["failed"][0])
    columns = dict(zip(history_sql.TASK_ROW_COLUMNS, row, strict=True))
    assert (columns["uuid"], columns["name"], columns["state"], columns["worker"]) == (
        ids["failed"][0], "tests.fail", "FAILURE", WORKER,
    )  # fmt: skip
    [(exception_type, message, traceback)] = history.run(
        _sql(page, "Exception and traceback"), uuid=ids["failed"][0]
    )
    assert (exception_type, message) == ("ValueError", "ValueError('disk 0')")
    assert "raise ValueError(message)" in traceback
    assert history.run(_sql(page, "Exception and traceback"), uuid=ids["succeeded"][0]) == []
    timeline = history.run(_sql(page, "Timeline"), uuid=ids["retried"])
    attempts = sorted(
        (attempt, event) for _, event, _, attempt in timeline if event in (
            "task-sent", "task-received")
    )  # fmt: skip
    assert attempts == [(n, kind) for n in range(3) for kind in ("task-received", "task-sent")]
    ends = sorted(event for _, event, _, _ in timeline if event not in (
        "task-sent", "task-received"))  # fmt: skip
    assert ends == ["task-retried"] * 2 + ["task-started"] * 3 + ["task-succeeded"]
    times = [t for t, _, _, _ in timeline]
    assert times == sorted(times)
    children = history.run(_sql(page, "Children"), uuid=ids["chain_parent"])
    assert [c[0] for c in children] == [ids["chain_child"]]
    assert history.run(_sql(page, "Task"), uuid="no-such-uuid") == []

    # The worker page's latest tasks: every task of the workload ran there.
    latest = history.run(_sql(history_sql.WORKER_PAGE_UID, worker_page.RECENT_TASKS_TITLE),
                         worker=WORKER)  # fmt: skip
    assert {r[0] for r in latest} == everything

    # And nothing else reads the history: every SQL panel was run above.
    ran = {
        (panels_uid, title)
        for panels_uid in generate.DASHBOARDS
        for title, _ in _sql_targets(panels_uid)
    }
    assert ran == {
        (recent_tasks_uid(), history_table.TITLE),
        (page, "Task"), (page, "Exception and traceback"), (page, "Timeline"),
        (page, "Children"),
        (history_sql.WORKER_PAGE_UID, worker_page.RECENT_TASKS_TITLE),
    }  # fmt: skip


def recent_tasks_uid() -> str:
    from grafana.dashboards_src import panels

    return panels.TASKS_UID


@pytest.fixture
def prometheus_url(tmp_path: Path, workload: tuple[ExporterProcess, History, Any]) -> Iterator[str]:
    exporter = workload[0]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "celery", "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [require_tool("prometheus"), f"--config.file={config_path}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(20)


def _query(url: str, expr: str) -> list[Mapping[str, Any]]:
    body = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", (expr, body)
    result: list[Mapping[str, Any]] = body["data"]["result"]
    return result


def test_every_promql_panel_of_the_worker_page_answers_for_a_live_worker(
    redis_url: str,
    workload: tuple[ExporterProcess, History, dict[str, Any]],
    prometheus_url: str,
) -> None:
    exporter = workload[0]
    wait_until(lambda: _query(prometheus_url, "up == 1"), timeout=60, what="the first scrape")
    # Tasks between two scrapes: the rates see their counters move.
    with client(redis_url) as app:
        app.send_task("tests.add", (1, 1))
        app.send_task("tests.fail", ("again",))
    wait_until(
        lambda: (
            exporter.metrics().get("celery_task_failed_total", task="tests.fail", worker=WORKER)
            == FAILED + 1
        ),
        what="the last failure counted",
    )
    settled_at = time.time() + 2
    wait_until(
        lambda: _query(prometheus_url, f"timestamp(up) > {settled_at}"),
        timeout=40,
        what="a scrape after the last tasks",
    )
    queries = [
        (title, expr)
        for uid, title, expr in generate.all_queries(worker_regex=WORKER)
        if uid == history_sql.WORKER_PAGE_UID
    ]
    assert len(queries) >= 15
    empty = []
    for title, expr in queries:
        result = _query(prometheus_url, expr)
        # A count() keeps no label: one series, for the one worker selected.
        workers = {series["metric"].get("worker", WORKER) for series in result}
        values = [float(series["value"][1]) for series in result]
        if workers != {WORKER} or any(math.isnan(value) for value in values):
            empty.append(f"{title}: {expr} -> {result}")
    assert empty == [], "worker-page queries without this worker's data:\n" + "\n".join(empty)
    [queues] = [e for t, e in queries if t == "Queues consumed" and e.startswith("max")]
    assert [s["metric"]["queue"] for s in _query(prometheus_url, queues)] == ["celery"]
    online = generate.substitute(worker_page.status_expr(), {worker_page.WORKER_VAR: WORKER})
    assert [float(s["value"][1]) for s in _query(prometheus_url, online)] == [1.0]

    # A clean stop: the Workers table keeps the worker, Offline since its last heartbeat, and
    # its goodbye's processed count: every receipt of the workload (a retry is received again).
    workload[2]["worker_process"].stop()
    wait_until(
        lambda: exporter.metrics().get("celery_worker_online", worker=WORKER) == 0.0,
        what="the worker offline after its goodbye",
    )
    metrics = exporter.metrics()
    last_heard = metrics.get("celery_worker_last_heartbeat_timestamp_seconds", worker=WORKER)
    assert last_heard is not None
    receipts = SUCCEEDED + FAILED + 3 + 2 + 2  # adds, fails, flaky_exc x3, the chain, 2 more
    assert metrics.get("celery_worker_processed_tasks_total", worker=WORKER) == receipts
    stopped_at = time.time() + 1
    wait_until(
        lambda: _query(prometheus_url, f"timestamp(up) > {stopped_at}"),
        timeout=40,
        what="a scrape after the stop",
    )
    [offline_since] = [
        expr
        for _, title, expr in generate.all_queries(worker_regex=".*")
        if title == workers_dashboard.TABLE_TITLE and "celery_worker_last_heartbeat" in expr
    ]
    [row] = _query(prometheus_url, offline_since)
    assert row["metric"]["worker"] == WORKER
    assert float(row["value"][1]) == last_heard * 1000
