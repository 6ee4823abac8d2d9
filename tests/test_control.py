"""Unit tests of what the controller reads from the workers' inspect replies."""

from __future__ import annotations

from typing import Any

import pytest

from celery_events_exporter.control import control_transport_options, pool_sizes


def test_pool_sizes_from_inspect_stats() -> None:
    replies = {
        "celery@a": {"pool": {"max-concurrency": 8, "processes": [1, 2]}, "total": {}},
        "celery@b": {"pool": {"max-concurrency": 2}},
    }
    assert pool_sizes(replies) == {"celery@a": 8, "celery@b": 2}


@pytest.mark.parametrize(
    "replies",
    [
        None,
        [],
        {"celery@a": "error"},
        {"celery@a": {"pool": None}},
        {"celery@a": {"pool": {"max-concurrency": "8"}}},
        {"celery@a": {"pool": {"max-concurrency": 0}}},
        {"celery@a": {"pool": {"max-concurrency": True}}},
        {"celery@a": {}},
    ],
)
def test_unusable_replies_are_left_out(replies: Any) -> None:
    assert pool_sizes(replies) == {}


@pytest.mark.parametrize(
    ("url", "given", "expected"),
    [
        (
            "redis://h:6379/0",
            {"exporter_fast_path": False, "visibility_timeout": 60},
            {"visibility_timeout": 60, "socket_timeout": 3.0, "socket_connect_timeout": 3.0},
        ),
        (  # the user's shorter timeout is kept, a longer one is cut to the controller's
            "redis://h:6379/0",
            {"socket_timeout": 1.5, "socket_connect_timeout": 30},
            {"socket_timeout": 1.5, "socket_connect_timeout": 3.0},
        ),
        (
            "amqp://guest:guest@h:5672//",
            {"read_timeout": 10.0, "confirm_publish": True},
            {
                "confirm_publish": True,
                "connect_timeout": 3.0,
                "read_timeout": 3.0,
                "write_timeout": 3.0,
            },
        ),
        ("memory://", {"exporter_fast_path": True}, {}),
    ],
)
def test_the_controllers_broker_calls_are_bounded(
    url: str, given: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert control_transport_options(url, given) == expected
