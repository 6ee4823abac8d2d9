"""Hypothesis strategies for the history's property tests: a task's events, any type, with every
field a history row keeps, drawn from few values so that ties and repeats are common."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from celery_events_exporter.state.changes import TaskChange

EVENT_TYPES = (
    "task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
    "task-retried", "task-revoked", "task-rejected", "task-orphaned",
)  # fmt: skip


def task_changes(
    uuid: str,
    t0: float,
    hosts: Sequence[str],
    texts: Sequence[str],
    parents: Sequence[str | None] = (),
) -> st.SearchStrategy[TaskChange]:
    """One event of task ``uuid``, at one of five instants from ``t0``, from one of ``hosts``;
    its text fields (name, result, exception, args...) absent or all from one of ``texts``; with
    a ``parent_id`` from ``parents`` if any are given (none: the event has no such field)."""

    def build(
        kind: str, at: float, host: str, retries: int | None, text: str | None, parent: str | None
    ) -> TaskChange:
        fields: dict[str, Any] = {
            "name": text and f"task.{text}",
            "retries": retries,
            "result": text,
            "runtime": at / 10,
            "exception": text and f"ValueError({text!r})",
            "traceback": text,
            "args": text,
            "kwargs": text,
            "queue": text,
            "eta": f"2025-12-06T05:46:{int(at) % 60:02d}",
            "root_id": text,
        }
        if parents:
            fields["parent_id"] = parent
        timestamp = t0 + at
        event = {"type": kind, "uuid": uuid, "timestamp": timestamp, "hostname": host, **fields}
        return TaskChange(uuid, kind, timestamp, event, None, None)

    return st.builds(
        build,
        st.sampled_from(EVENT_TYPES),
        st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0]),  # few instants: ties are the hard part
        st.sampled_from(hosts),
        st.one_of(st.none(), st.integers(0, 3)),
        st.one_of(st.none(), st.sampled_from(texts)),
        st.sampled_from(parents) if parents else st.none(),
    )
