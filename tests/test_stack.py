"""The proof that the dashboards work: the real stack minus Grafana.

Real prefork workers run real tasks; the exporter counts them; a real Prometheus scrapes it with
the compose stack's committed prometheus config and rules (only the target file and the password
file's path are swapped for this machine's). Then every PromQL expression of every dashboard is
executed against that Prometheus and must return data, and the Workers table's columns must read
exactly what each worker did.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from celery_events_exporter.web.webconfig import hash_password
from grafana.generate import all_queries
from testkit.ports import free_port
from tests.conftest import (
    REPO,
    ExporterProcess,
    Processes,
    client,
    require_tool,
    wait_until,
)

W1, W2 = "w1@stack", "w2@stack"

# What each worker does in one round (queues pin tasks to workers, so the split is exact).
ROUND_PER_WORKER = {
    W1: {"received": 6, "succeeded": 4, "failed": 1, "retried": 1},
    W2: {"received": 6, "succeeded": 2, "failed": 3, "retried": 0},
}
ROUNDS = 2

ABSENT_HERE = {"celery_queue_unacked_messages", "celery_task_orphaned_total"}
"""Series this stack cannot have: unacked counts come only from RabbitMQ's management API (this
stack runs on Redis), orphaned tasks only from a worker that dies mid-task (none does here).
Queries that read nothing else may come back empty."""

_SELECTOR = re.compile(r"\b(celery_[a-z0-9_]+)")


def metric_names(expr: str) -> set[str]:
    return set(_SELECTOR.findall(expr))


def run_round(broker_url: str, exporter: ExporterProcess, round_no: int) -> None:
    with client(broker_url) as app:
        q1, q2 = {"queue": "stack.w1"}, {"queue": "stack.w2"}
        for i in range(3):
            app.send_task("tests.add", (i, round_no), **q1)
        app.send_task("tests.fail", ("disk full",), **q1)
        app.send_task("tests.flaky", (1,), **q1)  # received twice: retried once, then succeeds
        for i in range(2):
            app.send_task("tests.add", (i, 10 + round_no), **q2)
        app.send_task("tests.reject", **q2)  # failed, then rejected
        for i in range(2):
            app.send_task("tests.fail", (f"timeout {i}",), **q2)
        doomed = app.send_task("tests.add", (0, 0), countdown=3, **q2)
        # A queue no worker consumes: its task waits, for the Queues dashboard's oldest-waiting
        # and no-consumer panels.
        app.send_task("tests.add", (0, round_no), queue="stack.idle")
        received = 6 * (round_no + 1)
        wait_until(
            lambda: exporter.metrics().get(
                "celery_task_received_total", task="tests.add", worker=W2
            ) == 3 * (round_no + 1),
            what="the ETA task received by w2",
        )  # fmt: skip
        app.control.revoke(doomed.id)
    wait_until(
        lambda: (
            all(
                sum(
                    exporter.metrics()
                    .by_label("celery_task_received_total", "task", worker=w)
                    .values()
                )
                == received
                for w in (W1, W2)
            )
            and exporter.metrics().get("celery_task_revoked_total", task="tests.add", worker=W2)
            == round_no + 1
        ),
        timeout=30,
        what=f"round {round_no} counted",
    )


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


SCRAPE_USER, SCRAPE_PASSWORD = "monitoring", "stack-test-password"


@pytest.fixture
def prometheus(tmp_path: Path, exporter_for_stack: ExporterProcess) -> Iterator[Prometheus]:
    config_dir = tmp_path / "prometheus"
    shutil.copytree(REPO / "prometheus", config_dir, ignore=shutil.ignore_patterns("tests"))
    targets = [{"targets": [f"127.0.0.1:{exporter_for_stack.port}"]}]
    (config_dir / "compose" / "targets" / "exporter.yml").write_text(yaml.safe_dump(targets))
    # The compose config reads the scrape password from the Prometheus container's path; here
    # it lives in a file of ours.
    password_file = tmp_path / "exporter-password"
    password_file.write_text(SCRAPE_PASSWORD)
    config_path = config_dir / "compose" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    (job,) = config["scrape_configs"]
    assert job["basic_auth"]["username"] == SCRAPE_USER
    job["basic_auth"]["password_file"] = str(password_file)
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            require_tool("prometheus"),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}", proc)
    try:
        wait_until(lambda: server.query("up == 1"), timeout=60, what="prometheus' first scrape")
        yield server
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


@pytest.fixture
def workers_for_stack(redis_url: str, processes: Processes) -> None:
    processes.worker(redis_url, W1, extra=("-Q", "stack.w1"))
    processes.worker(redis_url, W2, extra=("-Q", "stack.w2"))


@pytest.fixture
def exporter_for_stack(
    redis_url: str, processes: Processes, workers_for_stack: None, tmp_path: Path
) -> ExporterProcess:
    """The exporter as the compose stack runs it: basic auth on, payloads exposed."""
    web_config = tmp_path / "web-config.yml"
    users = {"basic_auth_users": {SCRAPE_USER: hash_password(SCRAPE_PASSWORD, cost=4)}}
    web_config.write_text(yaml.safe_dump(users))
    exporter = processes.exporter(
        redis_url,
        "--web.config.file",
        str(web_config),
        "--expose-task-payloads",
        "--queue-poll-interval",
        "1",
        auth=(SCRAPE_USER, SCRAPE_PASSWORD),
    )
    wait_until(
        lambda: set(exporter.metrics().by_label("celery_worker_online", "worker")) == {W1, W2},
        what="both workers' heartbeats",
    )
    run_round(redis_url, exporter, 0)  # every series exists before Prometheus' first scrape
    return exporter


def test_every_dashboard_query_returns_data_and_the_workers_table_is_exact(
    redis_url: str, exporter_for_stack: ExporterProcess, prometheus: Prometheus
) -> None:
    first = prometheus.query("celery_task_received_total")
    assert first, "the first scrape saw no task series"
    # A second round between two scrapes: every rate() and increase() sees its counters move.
    run_round(redis_url, exporter_for_stack, 1)
    settled_at = time.time()
    wait_until(
        lambda: prometheus.query(f"timestamp(up) > {settled_at}"),
        timeout=40,
        what="a scrape after the second round",
    )

    empty = []
    for uid, title, expr in all_queries():
        if metric_names(expr) <= ABSENT_HERE:
            continue
        if (uid, title) == ("celery-workers", "Workers") and _column_of(expr) == "offline_since":
            continue  # both workers stay online: no offline worker to list
        result = prometheus.query(expr)
        values = [float(series["value"][1]) for series in result]
        if not result or all(math.isnan(value) for value in values):
            empty.append(f"{uid} / {title}: {expr}")
    assert empty == [], "queries without data:\n" + "\n".join(empty)

    workers_table = {
        title_expr[2]: prometheus.query(title_expr[2])
        for title_expr in all_queries()
        if title_expr[0] == "celery-workers" and title_expr[1] == "Workers"
    }
    columns = {
        _column_of(expr): {series["metric"]["worker"]: float(series["value"][1]) for series in rows}
        for expr, rows in workers_table.items()
    }
    for worker, did in ROUND_PER_WORKER.items():
        for state, count in did.items():
            assert columns[state][worker] == ROUNDS * count, (worker, state)
        assert columns["online"][worker] == 1.0
        assert worker not in columns["offline_since"]
        assert columns["active_tasks"][worker] == 0.0
        assert columns["prefetched_tasks"][worker] == 0.0
        assert 0.0 <= columns["load1"][worker] < 100.0

    # The recent-tasks table: the Infinity query of the committed dashboard, as the Grafana
    # server would send it (empty search boxes, the last hour), against the exporter.
    board = json.loads((REPO / "grafana" / "dashboards" / "celery-tasks.json").read_text())
    infinity = [
        target
        for row in board["panels"]
        for panel in [row, *row.get("panels", [])]
        for target in panel.get("targets", [])
        if target.get("source") == "url"
    ]
    assert len(infinity) == 1
    now_ms = int(time.time() * 1000)
    grafana_vars = {
        "${tasks_api_url}": exporter_for_stack.url,
        "${task_uuid}": "", "${task_name}": "", "${task_state}": "",
        "${task_worker}": "", "${task_search}": "",
        "${__from}": str(now_ms - 3_600_000), "${__to}": str(now_ms),
    }  # fmt: skip
    url = infinity[0]["url"]
    params = {}
    for param in infinity[0]["url_options"]["params"]:
        value = param["value"]
        params[param["key"]] = grafana_vars.get(value, value)
    for name, value in grafana_vars.items():
        url = url.replace(name, value)
    # The Infinity datasource holds the exporter's base URL (provisioned from
    # CELERY_EXPORTER_URL); the panel's URL is the path under it, as Grafana joins them.
    assert url.startswith("/"), url
    url = exporter_for_stack.url + url
    response = requests.get(url, params=params, auth=(SCRAPE_USER, SCRAPE_PASSWORD), timeout=10)
    assert response.status_code == 200, response.text
    rows = response.json()
    # One row per uuid (a retried task is one row): 5 tasks sent to w1, 6 to w2 and one to the
    # queue nobody consumes (PENDING), per round.
    assert len(rows) == ROUNDS * (5 + 6 + 1)
    selectors = {column["selector"] for column in infinity[0]["columns"]}
    assert all(selectors <= set(row) for row in rows)
    states = {row["state"] for row in rows}
    assert {"SUCCESS", "FAILURE", "REVOKED", "PENDING"} <= states
    # Reject reads as Celery reads it (FAILURE), the rejection still visible.
    rejected = [row for row in rows if row["name"] == "tests.reject"]
    assert [row["state"] for row in rejected] == ["FAILURE"] * ROUNDS
    assert all(row["rejected"] is not None for row in rejected)
    assert requests.get(url, params=params, timeout=10).status_code == 401

    rules = requests.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    unhealthy = [
        rule["name"] for group in rules for rule in group["rules"] if rule["health"] != "ok"
    ]
    assert unhealthy == []


def _column_of(expr: str) -> str:
    """Which Workers-table column an expression feeds, from the metric it reads."""
    for state in ("received", "succeeded", "failed", "retried"):
        if f"celery_task_{state}_total" in expr or re.search(
            rf'celery_worker_tasks_total{{state=~?"{state}"', expr
        ):
            return state
    if "celery_worker_last_heartbeat_timestamp_seconds" in expr:
        return "offline_since"
    for gauge in ("online", "active_tasks", "load1", "load5", "load15", "prefetched_tasks"):
        if f"celery_worker_{gauge}" in expr:
            return gauge
    raise AssertionError(f"unexpected Workers-table query: {expr}")


def test_the_demo_workload_is_counted_exactly(
    redis_url: str, processes: Processes, tmp_path: Path
) -> None:
    """The compose stack's own pieces: demo worker, load generator, exporter."""
    from collections import Counter
    from itertools import islice

    from demo.workload import dispatches

    count, seed = 12, 4  # a mix with all four tasks, 2 failures and 4 retries
    env = {"CELERY_BROKER_URL": redis_url, "DEMO_DATA_DIR": str(tmp_path / "images")}
    exporter = processes.exporter(redis_url)
    worker, log_path = processes.spawn(
        [sys.executable, "-m", "celery", "-A", "demo.app", "worker", "-c", "2",
         "-n", "demo@stack", "-l", "info"],
        "demo-worker.log",
        env,
    )  # fmt: skip
    wait_until(lambda: " ready." in log_path.read_text(), timeout=30, what="the demo worker")
    loadgen = subprocess.run(
        [sys.executable, "-m", "demo.loadgen", "--count", str(count), "--seed", str(seed),
         "--rate", "50"],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert loadgen.returncode == 0, loadgen.stderr

    plan = list(islice(dispatches(seed), count))
    expected: dict[str, Counter[str]] = {
        state: Counter() for state in ("received", "retried", "succeeded", "failed")
    }
    for d in plan:
        expected["received"][d.task] += 1 + d.retries
        expected["retried"][d.task] += d.retries
        expected["succeeded" if d.expect == "SUCCESS" else "failed"][d.task] += 1

    def counts() -> dict[str, dict[str, float]]:
        metrics = exporter.metrics()
        return {
            state: {  # the series at 0 (every state exists from a pair's first event) left out
                task: value
                for task, value in metrics.by_label(
                    f"celery_task_{state}_total", "task", worker="demo@stack"
                ).items()
                if value
            }
            for state in expected
        }

    def settled() -> bool:
        return counts() == {
            state: {task: float(n) for task, n in by_task.items() if n}
            for state, by_task in expected.items()
        }

    wait_until(settled, timeout=60, what=f"the demo's exact counts {dict(expected)}")
    assert worker.poll() is None
