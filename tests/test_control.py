"""Unit tests of what the controller reads from the workers' inspect replies."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.control import pool_sizes


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
