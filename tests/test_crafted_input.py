"""Crafted events published to a real Redis cannot break a read of the real exporter: no 500 for
everyone, fields cut on the way into the store, counters never negative, bad numbers rejected
and counted (issue 11's attacks, each with what must come out)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from celery.events.event import get_exchange
from kombu import Connection, Producer
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from celery_events_exporter.tasks import bounds
from tests.conftest import ExporterProcess, Processes, wait_until

WORKER = "w1@crafted"
T0 = 1_732_010_550.0

MEMORY_STORE = ("--tasks.store", "memory://")
"""/api/tasks here is the in-memory recent-task store's (docs/tasks-api.md)."""


@pytest.fixture
def publish(redis_url: str) -> Iterator[Any]:
    """Publish JSON bodies as they are on Celery's event exchange, bypassing every serializer."""
    with Connection(redis_url) as conn:
        producer = Producer(conn.default_channel, exchange=get_exchange(conn))

        def send(body: bytes | list[dict[str, Any]] | dict[str, Any]) -> None:
            raw = body if isinstance(body, bytes) else orjson.dumps(body)
            producer.publish(
                raw,
                routing_key="task.multi",
                content_type="application/json",
                content_encoding="utf-8",
            )

        yield send


def task(kind: str, uuid: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": f"task-{kind}",
        "uuid": uuid,
        "hostname": WORKER,
        "timestamp": fields.pop("timestamp", T0),
        **fields,
    }


def rows(exporter: ExporterProcess) -> dict[str, dict[str, Any]]:
    response = exporter.get("/api/tasks", {"limit": "100"})
    assert response.status_code == 200, response.text
    return {row["uuid"]: row for row in response.json()}


def test_crafted_task_events_are_cut_and_never_break_the_tasks_view(
    redis_url: str, processes: Processes, publish: Any
) -> None:
    exporter = processes.exporter(redis_url, *MEMORY_STORE, "--expose-task-payloads")
    # 1 000 levels: past orjson's writer (254), within its reader (1 024), so written by hand.
    nested = b"[" * 1000 + b"]" * 1000
    long_uuid = "u" * 5000
    huge = "é" * 100_000  # 200 kB of UTF-8
    publish(
        orjson.dumps(
            [
                task("received", "deep", name="crafted.deep", args="()", kwargs="{}"),
                task("failed", "deep", timestamp=T0 + 1, exception="N", traceback="N"),
            ]
        ).replace(b'"N"', nested)
    )
    publish(  # json, not orjson: it writes the 2**70 retry count
        json.dumps([
            task("received", "big", name="crafted.big", args="()", kwargs="{}", eta=huge,
                 expires=huge, root_id=huge, parent_id=huge, retries=2**70),
            task("received", long_uuid, name="crafted.long-uuid", args="()", kwargs="{}"),
            task("received", "odd", name="crafted.odd", args="()", kwargs="{}"),
            task("succeeded", "odd", timestamp="tomorrow", runtime=-5.0, result="1"),
            task("received", "ok", name="crafted.ok", args="()", kwargs="{}"),
            task("succeeded", "ok", timestamp=T0 + 3, runtime=0.25, result="2"),
        ]).encode()
    )  # fmt: skip
    wait_until(
        lambda: exporter.metrics().get("celery_task_succeeded_total", task="crafted.ok",
                                       worker=WORKER) == 1.0,
        what="the events after the crafted ones to be counted",
    )  # fmt: skip
    by_uuid = rows(exporter)
    cut_uuid = long_uuid[: bounds.ID_BYTES]
    assert set(by_uuid) == {"deep", "big", cut_uuid, "odd", "ok"}

    deep = by_uuid["deep"]
    assert (deep["state"], deep["exception_type"], deep["exception"], deep["traceback"]) == (
        "FAILURE", None, "", "",
    )  # fmt: skip
    big = by_uuid["big"]
    assert big["eta"] == big["expires"] == "é" * (bounds.SHORT_TEXT_BYTES // 2)
    assert big["root_id"] == big["parent_id"] == "é" * (bounds.ID_BYTES // 2)
    assert big["retries"] is None  # past any real count: not taken
    assert by_uuid[cut_uuid]["name"] == "crafted.long-uuid"
    odd = by_uuid["odd"]
    # A string timestamp falls back to the exporter's clock; a negative runtime is not taken.
    assert (odd["state"], odd["runtime"], odd["received"]) == (
        "SUCCESS", None, "2024-11-19T10:02:30.000Z",
    )  # fmt: skip
    assert odd["succeeded"] is not None and odd["succeeded"] > "2025"
    assert (by_uuid["ok"]["runtime"], by_uuid["ok"]["result"]) == (0.25, "2")

    metrics = exporter.metrics()
    assert (
        metrics.get("celery_task_exceptions_total", task="crafted.deep", exception="unknown") == 1.0
    )
    # No observation: the runtime series exists only at 0 (created with the pair's first event).
    assert set(
        metrics.series("celery_task_runtime_seconds_count", task="crafted.odd").values()
    ) <= {0.0}
    assert metrics.get("celery_exporter_api_rows_skipped_total", endpoint="/api/tasks") == 0.0
    assert exporter.get("/api/tasks", {"search": "crafted"}).status_code == 200
    assert exporter.proc.poll() is None


def test_crafted_heartbeats_are_rejected_and_never_break_the_workers_view(
    redis_url: str, processes: Processes, publish: Any
) -> None:
    exporter = processes.exporter(redis_url, *MEMORY_STORE)

    def heartbeat(hostname: str, **fields: Any) -> dict[str, Any]:
        return {
            "type": "worker-heartbeat", "hostname": hostname, "timestamp": T0, "freq": 2.0,
            "active": 1, "processed": 7, "loadavg": [0.5, 0.25, 0.125], "sw_ident": "py-celery",
            "sw_ver": "5.7.0", "sw_sys": "Linux", **fields,
        }  # fmt: skip

    crafted = [
        heartbeat("w-active@crafted", active=1e308),
        heartbeat("w-freq@crafted", freq=1e308),
        heartbeat("w-processed@crafted", processed=-1),
        heartbeat("w-load@crafted", loadavg={"1": 0.5}),
        heartbeat("w-freq0@crafted", freq=0),
    ]
    for event in crafted:
        publish(event)
    # kombu's JSON writes NaN; orjson does not read it.
    publish(json.dumps(heartbeat("w-nan@crafted", freq=float("nan"))).encode())
    publish(heartbeat("w-good@crafted"))

    def good_row() -> list[dict[str, Any]]:
        response = exporter.get("/api/workers")
        assert response.status_code == 200, response.text
        return [row for row in response.json() if row["worker"] == "w-good@crafted"]

    [row] = wait_until(good_row, what="the good worker after the crafted heartbeats")
    assert {key: row[key] for key in ("status", "active", "processed", "loadavg", "freq")} == {
        "status": "online", "active": 1, "processed": 7, "loadavg": [0.5, 0.25, 0.125],
        "freq": 2.0,
    }  # fmt: skip
    # The crafted workers are not known at all: their heartbeats were rejected whole.
    assert [row["worker"] for row in exporter.get("/api/workers").json()] == ["w-good@crafted"]
    metrics = exporter.metrics()
    rejected = metrics.by_label("celery_exporter_events_rejected_total", "reason")
    assert rejected.get("invalid_field", 0) + rejected.get("invalid_json", 0) == 6.0, rejected
    assert rejected.get("invalid_field", 0) >= 5.0, rejected
    assert metrics.by_label("celery_worker_processed_tasks_total", "worker") == {
        "w-good@crafted": 7.0
    }
    # The whole page parses as OpenMetrics (a negative counter made its parser reject it).
    page = exporter.get("/metrics").text
    openmetrics = exporter_openmetrics(exporter)
    assert "celery_worker_processed_tasks_total" in page
    parsed = text_string_to_metric_families(openmetrics)  # type: ignore[no-untyped-call]
    families = {family.name for family in parsed}
    assert "celery_worker_processed_tasks" in families
    assert metrics.get("celery_exporter_api_rows_skipped_total", endpoint="/api/workers") == 0.0


def exporter_openmetrics(exporter: ExporterProcess) -> str:
    import requests

    response = requests.get(
        f"{exporter.url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=10,
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    return response.text


def test_one_nan_in_a_batch_costs_none_of_its_other_events(
    redis_url: str, processes: Processes, publish: Any
) -> None:
    """kombu's JSON writes a non-finite float as NaN and Celery reads it back: a task.multi batch
    of 24 events with one NaN runtime is counted whole; only that runtime is not observed."""
    exporter = processes.exporter(redis_url, *MEMORY_STORE)
    batch: list[dict[str, Any]] = []
    for number in range(12):
        uuid = f"nan-{number}"
        batch.append(task("received", uuid, name="crafted.nan", args="()", kwargs="{}"))
        runtime = float("nan") if number == 5 else 0.5
        batch.append(task("succeeded", uuid, timestamp=T0 + 1, runtime=runtime, result="1"))
    body = json.dumps(batch).encode()  # the stdlib writes NaN, as kombu's serializer does
    assert b"NaN" in body
    publish(body)
    wait_until(
        lambda: exporter.metrics().get("celery_task_succeeded_total", task="crafted.nan",
                                       worker=WORKER) == 12.0,
        what="every event of the batch counted",
    )  # fmt: skip
    metrics = exporter.metrics()
    assert metrics.get("celery_task_received_total", task="crafted.nan", worker=WORKER) == 12.0
    assert (
        metrics.get("celery_task_runtime_seconds_count", task="crafted.nan", worker=WORKER) == 11.0
    )
    assert metrics.get("celery_task_runtime_seconds_sum", task="crafted.nan", worker=WORKER) == 5.5
    assert metrics.get("celery_exporter_events_rejected_total", reason="invalid_json") is None
    by_uuid = rows(exporter)
    assert {uuid for uuid in by_uuid if uuid.startswith("nan-")} == {f"nan-{n}" for n in range(12)}
    assert by_uuid["nan-5"]["state"] == "SUCCESS"
    assert by_uuid["nan-5"]["runtime"] is None
    assert by_uuid["nan-4"]["runtime"] == 0.5
