"""The history's row model: one row per task, the same whatever order its events come in."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_events_exporter.history.row import (
    UNKNOWN,
    Rows,
    TaskRow,
    finish,
    parse_time,
    task_row,
)
from celery_events_exporter.state.changes import TaskChange
from celery_events_exporter.tasks.redact import Redactor, compile_secret_keys, secret_key_patterns
from tests.history_events import task_changes

pytestmark = pytest.mark.unit

UUID = "8d8f3f4e-5b0e-4d43-9a4f-0c8b1a7d2e11"
T0 = 1_765_000_000.0
REDACTOR = Redactor(compile_secret_keys(secret_key_patterns(())), 1024)


def change(kind: str, at: float, hostname: str = "celery@w1", **fields: Any) -> TaskChange:
    event = {"type": kind, "uuid": UUID, "timestamp": at, "hostname": hostname, **fields}
    return TaskChange(UUID, kind, at, event, None, None)


def row_of(
    changes: list[TaskChange], redactor: Redactor | None = None, pending_before: float | None = None
) -> TaskRow:
    """The row the writer folds of ``changes``, finished as it writes it."""
    rows = Rows(redactor)
    rows.fold((c.uuid, c.type, c.timestamp, c.event, c.name, c.worker) for c in changes)
    (folded,) = rows.by_uuid.values()
    return task_row(finish(folded, pending_before))


def retried_countdown_zero() -> list[TaskChange]:
    """A task retried with countdown=0 on a prefork worker: the first attempt's task-retried is
    stamped after the second attempt's task-succeeded (FIELD-NOTES)."""
    return [
        change("task-sent", T0, "client@app", name="tests.flaky", retries=0, queue="celery",
               exchange="", routing_key="celery", args="(1,)", kwargs="{'token': 'abc'}"),
        change("task-received", T0 + 0.010, name="tests.flaky", retries=0, args="(1,)",
               kwargs="{'token': 'abc'}", root_id=UUID, parent_id=None),
        change("task-started", T0 + 0.011),
        change("task-received", T0 + 0.040, name="tests.flaky", retries=1, args="(1,)",
               kwargs="{'token': 'abc'}", root_id=UUID),
        change("task-started", T0 + 0.041),
        change("task-succeeded", T0 + 0.050, result="1", runtime=0.009),
        change("task-retried", T0 + 0.052, exception="Retry('Retry in 0s')",
               traceback="Traceback...\ncelery.exceptions.Retry: Retry in 0s"),
    ]  # fmt: skip


def test_a_late_retry_never_overrides_the_success() -> None:
    row = row_of(retried_countdown_zero(), REDACTOR)
    assert (row.state, row.retries, row.succeeded, row.retried) == (
        "SUCCESS", 1, T0 + 0.050, T0 + 0.052,
    )  # fmt: skip
    assert (row.runtime, row.result, row.worker, row.client) == (
        0.009, "1", "celery@w1", "client@app",
    )  # fmt: skip
    # The default exchange, "" in the event, is absent: null, like every empty text.
    assert (row.queue, row.exchange, row.routing_key) == ("celery", None, "celery")
    assert row.exception_type == "Retry"
    # The kwargs were masked before they reached the row: a row is what gets stored.
    assert row.kwargs == "{'token': '********'}"
    assert [kind for _, kind, _, _ in row.events] == [
        "task-sent", "task-received", "task-started", "task-received", "task-started",
        "task-succeeded", "task-retried",
    ]  # fmt: skip
    assert row.updated_at == T0 + 0.052
    assert row.seen_at == T0


def test_a_late_sent_never_overrides_a_workers_event() -> None:
    """The client stamps task-sent after it published the task: a worker quick to run it
    stamps its events earlier (seen under load: 3 of 20 tasks read PENDING forever)."""
    sent = change("task-sent", T0 + 0.004, "client@app", name="tests.add", queue="celery")
    worker_events = [
        change("task-received", T0, name="tests.add"),
        change("task-started", T0 + 0.001),
        change("task-succeeded", T0 + 0.002, result="2", runtime=0.001),
    ]
    assert row_of([*worker_events, sent]).state == "SUCCESS"
    assert row_of([worker_events[0], sent]).state == "RECEIVED"
    row = row_of([sent])
    assert (row.state, row.sent, row.updated_at) == ("PENDING", T0 + 0.004, T0 + 0.004)
    assert row_of([sent], pending_before=T0 + 1).state == "UNKNOWN"


def test_hidden_payloads_never_reach_the_row() -> None:
    row = row_of(retried_countdown_zero(), None)
    assert (row.args, row.kwargs, row.result, row.exception, row.traceback) == (None,) * 5
    assert row.exception_type == "Retry"  # the class is always kept


def test_reject_reads_failure_with_the_rejection_kept() -> None:
    row = row_of(
        [
            change("task-received", T0, name="tests.reject"),
            change("task-started", T0 + 0.1),
            change("task-failed", T0 + 0.2, exception="reject requeue=False: not today"),
            change("task-rejected", T0 + 0.2, requeue=False),
        ]
    )
    assert (row.state, row.failed, row.rejected, row.exception_type) == (
        "FAILURE", T0 + 0.2, T0 + 0.2, "Reject",
    )  # fmt: skip
    assert row.runtime == pytest.approx(0.1)


def test_a_rejection_alone_reads_rejected() -> None:
    """Celery before 5.7 sends only task-rejected."""
    row = row_of([change("task-received", T0), change("task-rejected", T0 + 0.1)])
    assert row.state == "REJECTED"


def test_absent_values_are_none_and_times_are_one_format() -> None:
    row = row_of(
        [change("task-received", T0, name="t", eta="2025-12-06T05:46:40.500000+00:00",
                expires="2025-12-06T05:46:40", args="()", kwargs="{}")]
    )  # fmt: skip
    assert (row.started, row.result, row.worker, row.parent_id, row.runtime) == (
        None, None, "celery@w1", None, None,
    )  # fmt: skip
    assert row.eta == 1_764_999_999.0 + 1.5  # ISO text became epoch seconds like every time
    assert row.expires == parse_time("2025-12-06T05:46:40+00:00")


def test_a_task_seen_only_as_sent_reads_unknown_past_the_pending_limit() -> None:
    sent = [change("task-sent", T0, "client@app", name="t")]
    assert row_of(sent, pending_before=T0 - 1).state == "PENDING"
    assert row_of(sent, pending_before=T0 + 1).state == UNKNOWN
    # Its next event brings it back whatever the limit says.
    received = row_of([*sent, change("task-received", T0 + 5)], pending_before=T0 + 10)
    assert received.state == "RECEIVED"


def test_an_orphaned_running_task_reads_lost() -> None:
    row = row_of(
        [
            change("task-received", T0),
            change("task-started", T0 + 1),
            # stamped with the exporter's clock, which may be behind the worker's
            change("task-orphaned", T0 + 0.5),
        ]
    )
    assert (row.state, row.orphaned, row.worker) == ("LOST", T0 + 0.5, "celery@w1")


# -- the property: any permutation or repetition of a task's events gives the same row ------

events = task_changes(UUID, T0, ["celery@w1", "celery@w2", "client@app"], ["a", "b", "password=x"])


@settings(max_examples=300, deadline=None)
@given(st.lists(events, min_size=1, max_size=10), st.randoms(use_true_random=False))
def test_any_order_and_repetition_gives_the_same_row(
    changes: list[TaskChange], rng: random.Random
) -> None:
    expected = row_of(changes, REDACTOR)
    shuffled = changes + rng.sample(changes, k=rng.randint(0, len(changes)))
    rng.shuffle(shuffled)
    assert row_of(shuffled, REDACTOR) == expected
    # (The same events written in several parts, merged by the database, give the same row
    # too: tests/test_history_store.py.)


def test_a_task_retried_without_end_keeps_its_latest_events() -> None:
    changes = [change("task-retried", T0 + i, retries=i) for i in range(500)]
    row = row_of(changes[::-1] + changes[:10])
    assert [retries for _, _, _, retries in row.events] == list(range(436, 500))
    assert (row.state, row.retries, row.retried) == ("RETRY", 499, T0 + 499)
