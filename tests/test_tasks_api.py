"""/api/tasks and /api/workers against a real prefork worker running real tasks."""

from __future__ import annotations

import re
import subprocess
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests

from celery_events_exporter.tasks.redact import ELLIPSIS, MASK
from celery_events_exporter.web.api import PAYLOADS_HIDDEN
from tests.conftest import ExporterProcess, Processes, client, require_tool, wait_until

WORKER = "w1@tasksapi"
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
REQUIRED_KEYS = {
    "name", "uuid", "state", "args", "kwargs", "result", "received", "started", "runtime",
    "worker",
}  # fmt: skip

MEMORY_STORE = ("--tasks.store", "memory://")
"""/api/tasks here is the in-memory recent-task store's (docs/tasks-api.md)."""


def image_kwargs(n: int, lifespan: int = 3600) -> dict[str, Any]:
    """The seed's blurit.image kwargs, plus a token that must never be served as is."""
    return {
        "input_image": {"protocol": "file", "path": f"input/1732010550292-{n}.jpg"},
        "output_image": {"protocol": "file", "path": f"output/{n}.jpg"},
        "lifespan": lifespan,
        "api_token": f"tok-{n}-do-not-leak",
    }


def tasks(exporter: ExporterProcess, **params: str) -> list[dict[str, Any]]:
    response = exporter.get("/api/tasks", params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    rows: list[dict[str, Any]] = response.json()
    return rows


def finished(exporter: ExporterProcess, ids: list[str]) -> list[dict[str, Any]]:
    """Wait until every task of ``ids`` reached a final state; rows newest first."""
    final = {"SUCCESS", "FAILURE", "REVOKED", "REJECTED"}

    def done() -> list[dict[str, Any]]:
        rows = [row for row in tasks(exporter, limit="1000") if row["uuid"] in ids]
        return rows if len(rows) == len(ids) and {r["state"] for r in rows} <= final else []

    return wait_until(done, timeout=30, what=f"{len(ids)} tasks to finish")


def moment(text: str) -> datetime:
    assert ISO_MS.fullmatch(text), text
    return datetime.fromisoformat(text)


def test_a_known_task_has_exactly_the_row_flower_shows(
    broker_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(broker_url, *MEMORY_STORE, "--expose-task-payloads")
    processes.worker(broker_url, WORKER)
    task_id = str(uuid.uuid4())
    kwargs = image_kwargs(480)
    with client(broker_url) as app:
        app.send_task("tests.image", kwargs=kwargs, task_id=task_id)
    [row] = finished(exporter, [task_id])

    assert set(row) >= REQUIRED_KEYS
    assert {key: row[key] for key in ("name", "uuid", "state", "args", "worker", "retries")} == {
        "name": "tests.image",
        "uuid": task_id,
        "state": "SUCCESS",
        "args": "()",
        "worker": WORKER,
        "retries": 0,
    }
    assert row["kwargs"] == repr({**kwargs, "api_token": MASK})
    assert row["result"] == repr(
        {
            "input_image": kwargs["input_image"],
            "output_image": kwargs["output_image"],
            "chronos": {"total": 0.01},
            "access_token": MASK,
        }
    )
    assert (row["exception"], row["traceback"]) == ("", "")
    received, started, succeeded = (moment(row[k]) for k in ("received", "started", "succeeded"))
    assert received <= started <= succeeded
    # The client publishes the task, then timestamps its task-sent event: a worker that is
    # quick enough receives the task (and stamps task-received) before that, by a few ms.
    assert row["sent"] is not None and moment(row["sent"]) <= received + timedelta(seconds=1)
    assert isinstance(row["runtime"], float) and 0 < row["runtime"] < 1.0
    assert (row["failed"], row["eta"], row["root_id"]) == (None, None, task_id)
    assert "tok-480" not in exporter.get("/api/tasks").text


def test_filters_failures_retries_and_workers(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(redis_url, *MEMORY_STORE)
    processes.worker(redis_url, WORKER)
    adds = [f"add-{i}-{uuid.uuid4()}" for i in range(3)]
    failing = [f"img-fail-{i}-{uuid.uuid4()}" for i in range(2)]
    good = f"img-ok-{uuid.uuid4()}"
    flaky = f"flaky-{uuid.uuid4()}"
    with client(redis_url) as app:
        for i, task_id in enumerate(adds):
            app.send_task("tests.add", (i, i), task_id=task_id)
        for i, task_id in enumerate(failing):
            app.send_task("tests.image", kwargs=image_kwargs(i, lifespan=-1), task_id=task_id)
        app.send_task("tests.image", kwargs=image_kwargs(9), task_id=good)
        app.send_task("tests.flaky", (2,), task_id=flaky)
    everything = [*adds, *failing, good, flaky]
    rows = finished(exporter, everything)
    by_id = {row["uuid"]: row for row in rows}

    # Newest received first.
    received = [moment(row["received"]) for row in tasks(exporter)]
    assert received == sorted(received, reverse=True) and len(received) == 7

    # Payloads are hidden by default, and the response says how to show them.
    response = exporter.get("/api/tasks")
    assert response.headers["X-Task-Payloads"] == PAYLOADS_HIDDEN
    assert {(row["args"], row["kwargs"], row["result"]) for row in response.json()} == {
        ("", "", "")
    }
    assert "tok-" not in response.text and "input/1732010550292" not in response.text

    # Failures show their exception class; the message and traceback are payloads, hidden.
    # Their runtime runs from started to failed.
    for task_id in failing:
        row = by_id[task_id]
        assert row["state"] == "FAILURE"
        assert (row["exception_type"], row["exception"], row["traceback"]) == (
            "ValueError", "", "",
        )  # fmt: skip
        # The row's timestamps are cut to milliseconds; the runtime is not.
        delta = (moment(row["failed"]) - moment(row["started"])).total_seconds()
        assert abs(row["runtime"] - delta) <= 0.001, (row["runtime"], delta)
    # A retried task keeps its uuid: one row, received three times, SUCCESS in the end.
    assert (by_id[flaky]["state"], by_id[flaky]["retries"]) == ("SUCCESS", 2)
    assert by_id[flaky]["retried"] is not None
    # tests.flaky retries without an exception: Celery reports it as 'None', shown as "".
    assert (by_id[flaky]["exception_type"], by_id[flaky]["exception"]) == (None, "")
    assert "lifespan must be positive" not in response.text

    def ids(**params: str) -> set[str]:
        return {row["uuid"] for row in tasks(exporter, **params)}

    assert ids(uuid=good) == {good}
    assert ids(uuid=good.upper()[:15]) == {good}
    assert ids(name="tests.add") == set(adds)
    assert ids(name="IMAGE") == {*failing, good}
    assert ids(state="FAILURE") == set(failing)
    assert ids(state="failure,success") == set(everything)
    assert ids(state="STARTED") == set()
    assert ids(worker="w1@") == set(everything)
    assert ids(worker="w2@") == set()
    assert ids(search="img-fail") == set(failing)
    assert ids(search="failure") == set(failing)
    assert ids(search="valueerror") == set(failing)
    assert ids(search="lifespan") == set()
    assert ids(search="tasksapi") == set(everything)
    assert ids(name="image", state="SUCCESS") == {good}
    assert [row["uuid"] for row in tasks(exporter, limit="2")] == [
        row["uuid"] for row in tasks(exporter)[:2]
    ]
    first = min(moment(by_id[t]["received"]) for t in everything)
    last = max(moment(by_id[t]["received"]) for t in everything)
    # Grafana sends ${__from} and ${__to} as epoch milliseconds; ISO 8601 works too.
    first_ms, last_ms = round(first.timestamp() * 1000), round(last.timestamp() * 1000)
    assert ids(**{"from": str(first_ms), "to": str(last_ms + 1)}) == set(everything)
    assert ids(**{"from": str(last_ms + 1)}) == set()
    before = (first - timedelta(milliseconds=1)).isoformat(timespec="milliseconds")
    assert ids(to=before) == set()
    assert ids(**{"from": before}) == set(everything)

    for params, message in (
        ({"state": "DONE"}, "unknown state 'DONE'"),
        ({"limit": "-1"}, "limit must be within"),
        ({"sort": "name"}, "unknown query parameter(s): sort"),
        ({"from": "yesterday"}, "from must be epoch milliseconds or ISO 8601"),
    ):
        response = exporter.get("/api/tasks", params)
        assert response.status_code == 400, params
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["error"].startswith(message), response.json()

    expected_worker = {
        "worker": WORKER, "status": "online", "active": 0, "received": 9, "started": 9,
        "succeeded": 5, "failed": 2, "retried": 2, "rejected": 0, "revoked": 0,
    }  # fmt: skip

    def worker_row() -> dict[str, Any]:
        [worker] = exporter.get("/api/workers").json()
        shown = {key: worker[key] for key in expected_worker}
        return worker if shown == expected_worker else {}

    # "active" comes from heartbeats: wait for one sent after the last task.
    worker = wait_until(worker_row, timeout=10, what=f"/api/workers to show {expected_worker}")
    assert len(worker["loadavg"]) == 3 and moment(worker["heartbeat"])
    assert exporter.get("/api/workers", {"search": "nobody"}).json() == []
    assert exporter.get("/api/workers", {"status": "x"}).status_code == 400


def test_exposed_failures_are_masked_and_labelled_by_class(
    redis_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(redis_url, *MEMORY_STORE, "--expose-task-payloads")
    processes.worker(redis_url, WORKER)
    failed, rejected, retried = (f"{kind}-{uuid.uuid4()}" for kind in ("fail", "rej", "retry"))
    with client(redis_url) as app:
        app.send_task("tests.fail", ("login refused, password=hunter2",), task_id=failed)
        app.send_task("tests.reject", task_id=rejected)
        app.send_task("tests.flaky_exc", (1,), task_id=retried)
    by_id = {row["uuid"]: row for row in finished(exporter, [failed, rejected, retried])}

    row = by_id[failed]
    assert (row["exception_type"], row["exception"]) == (
        "ValueError", f"ValueError('login refused, password={MASK}')",
    )  # fmt: skip
    assert row["traceback"].startswith("Traceback (most recent call last):")
    assert row["traceback"].rstrip().endswith(f"ValueError: login refused, password={MASK}")
    assert "hunter2" not in exporter.get("/api/tasks").text
    # Celery 5.7 reports Reject as a failure whose text is Reject's own repr.
    row = by_id[rejected]
    assert (row["state"], row["exception_type"], row["exception"]) == (
        "REJECTED", "Reject", "reject requeue=False: not today",
    )  # fmt: skip
    # A task that retried on an IOError and then succeeded shows no exception.
    row = by_id[retried]
    assert (row["state"], row["retries"], row["exception_type"], row["exception"]) == (
        "SUCCESS", 1, None, "",
    )  # fmt: skip
    assert (row["traceback"], row["retried"] is not None) == ("", True)
    metrics = exporter.metrics()
    assert metrics.by_label("celery_task_exceptions_total", "exception", task="tests.reject") == {
        "Reject": 1.0
    }
    assert metrics.by_label("celery_task_exceptions_total", "task") == {
        "tests.fail": 1.0, "tests.reject": 1.0,
    }  # fmt: skip


def test_the_store_keeps_the_newest_tasks_within_its_bound(
    redis_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(
        redis_url, *MEMORY_STORE,
        "--max-recent-tasks", "3",
        "--expose-task-payloads",
        "--secret-key-pattern", "lifespan",
        "--no-default-secret-key-patterns",
        "--max-payload-length", "60",
    )  # fmt: skip
    processes.worker(redis_url, WORKER, concurrency=1)
    sent: list[str] = []
    with client(redis_url) as app:
        for i in range(5):
            task_id = f"bounded-{i}-{uuid.uuid4()}"
            app.send_task("tests.image", kwargs=image_kwargs(i), task_id=task_id)
            sent.append(task_id)
            # One at a time, so that "newest" is unambiguous.
            finished_ids = {row["uuid"] for row in finished(exporter, [task_id])}
            assert finished_ids == {task_id}
    rows = tasks(exporter, limit="10")
    assert [row["uuid"] for row in rows] == sent[:1:-1]
    # Without the defaults only the configured pattern masks, and long values are cut to 60
    # characters.
    kwargs = repr({**image_kwargs(4), "lifespan": MASK})
    assert rows[0]["kwargs"] == kwargs[:60] + ELLIPSIS


def test_secret_key_patterns_add_to_the_defaults(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(
        redis_url, *MEMORY_STORE, "--expose-task-payloads", "--secret-key-pattern", "lifespan"
    )
    processes.worker(redis_url, WORKER)
    task_id = str(uuid.uuid4())
    with client(redis_url) as app:
        app.send_task("tests.image", kwargs=image_kwargs(7), task_id=task_id)
    [row] = finished(exporter, [task_id])
    assert row["kwargs"] == repr({**image_kwargs(7), "lifespan": MASK, "api_token": MASK})


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-default-secret-key-patterns"],
         "--no-default-secret-key-patterns needs at least one --secret-key-pattern"),
        (["--secret-key-pattern", "("], "bad secret key pattern '('"),
    ],
)  # fmt: skip
def test_secret_key_flags_are_checked_at_start(args: list[str], message: str) -> None:
    done = subprocess.run(
        [require_tool("celery-events-exporter"), *args, "--web.listen-address", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr


def test_api_answers_404_for_unknown_paths(redis_url: str, processes: Processes) -> None:
    exporter = processes.exporter(redis_url, *MEMORY_STORE, wait_connected=False)
    assert exporter.get("/api/nothing").status_code == 404
    assert requests.get(f"{exporter.url}/api/tasks", timeout=5).json() == []
