"""Unit tests of what the controller reads from the workers' inspect replies, and of when it greets
a worker again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from celery_events_exporter import control
from celery_events_exporter.control import (
    CollectionOver,
    Replies,
    agreeing_stats,
    capped,
    control_transport_options,
    pool_sizes,
)


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


def _drops() -> tuple[dict[str, int], Callable[[str, int], None]]:
    counted: dict[str, int] = {}

    def drop(reason: str, count: int) -> None:
        counted[reason] = counted.get(reason, 0) + count

    return counted, drop


def test_a_hostname_answering_twice_is_believed_neither_time() -> None:
    counted, drop = _drops()
    replies = Replies(None, drop)
    replies({"a@h": {"pool": {"max-concurrency": 4}}})
    replies({"b@h": {"pool": {"max-concurrency": 2}}})
    replies({"a@h": {"pool": {"max-concurrency": 1}}})
    replies({"a@h": {"pool": {"max-concurrency": 1}}})
    replies(["not", "a", "reply"])
    assert replies.from_known({"a@h", "b@h"}, str) == {"b@h": {"pool": {"max-concurrency": 2}}}
    assert replies.answered() == {"a@h", "b@h"}
    assert counted == {"duplicate": 3, "malformed": 1}


def test_replies_only_from_workers_heard_and_asked() -> None:
    counted, drop = _drops()
    replies = Replies(["a@h", "b@h"], drop)
    replies({"c@h": []})  # not asked
    replies({"a@h": ["x"]})
    with pytest.raises(CollectionOver):  # every worker asked answered: no need to wait
        replies({"b@h": ["y"]})
    assert replies.from_known({"a@h"}, str) == {"a@h": ["x"]}  # b@h never heard of
    assert counted == {"unknown_worker": 2}


def test_a_collection_ends_past_its_reply_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "MAX_REPLIES", 3)
    counted, drop = _drops()
    replies = Replies(None, drop)
    for i in range(3):
        replies({f"w{i}@h": []})
    with pytest.raises(CollectionOver):
        replies({"w3@h": []})
    assert counted == {"too_many": 1}
    assert len(replies.by_host) == 3


def test_entries_past_the_per_worker_cap_are_cut_and_counted() -> None:
    counted, drop = _drops()
    assert capped({"a@h": list(range(10)), "b@h": [1], "c@h": "x"}, 4, drop) == {
        "a@h": [0, 1, 2, 3],
        "b@h": [1],
    }
    assert counted == {"too_many": 6, "malformed": 1}


def test_stats_must_agree_with_the_heartbeats() -> None:
    counted, drop = _drops()
    heartbeats = {"a@h": (100, 2), "b@h": (200, 5), "c@h": (None, None)}
    replies = {
        "a@h": {"pid": 100, "pool": {"max-concurrency": 4}},  # agrees
        "b@h": {"pid": 999, "pool": {"max-concurrency": 8}},  # another process
        "c@h": {"pool": {"max-concurrency": 3}},  # no pid in its heartbeats: nothing to check
    }
    assert agreeing_stats(replies, heartbeats, str, drop) == {"a@h": 4, "c@h": 3}
    # Smaller than what the heartbeats saw active at once: not the pool that ran them.
    small = {"b@h": {"pid": 200, "pool": {"max-concurrency": 1}}}
    assert agreeing_stats(small, heartbeats, str, drop) == {}
    assert counted == {"mismatch": 2}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_that_does_not_answer_is_greeted_again_until_its_last_attempt() -> None:
    clock = FakeClock()
    retries = control.GreetingRetries(clock)
    retries.note(["late@h", "quick@h"], answered=["quick@h"])
    assert retries.due() == []
    clock.now += control.GREETING_RETRY_AFTER
    assert retries.due() == ["late@h"]
    for _ in range(control.GREETING_ATTEMPTS - 2):
        retries.note(["late@h"], answered=[])
        clock.now += control.GREETING_RETRY_AFTER
        assert retries.due() == ["late@h"]
    retries.note(["late@h"], answered=[])  # its last greeting, unanswered too
    clock.now += 60.0
    assert retries.due() == []


def test_an_answer_ends_the_retries() -> None:
    clock = FakeClock()
    retries = control.GreetingRetries(clock)
    retries.note(["late@h"], answered=[])
    clock.now += control.GREETING_RETRY_AFTER
    retries.note(retries.due(), answered=["late@h"])
    clock.now += 60.0
    assert retries.due() == []


def test_workers_waiting_for_another_greeting_are_capped() -> None:
    clock = FakeClock()
    retries = control.GreetingRetries(clock)
    forged = [f"forged-{i}@h" for i in range(control.MAX_GREETING_RETRIES + 500)]
    retries.note(forged, answered=[])
    clock.now += control.GREETING_RETRY_AFTER
    assert retries.due() == forged[: control.MAX_GREETING_RETRIES]
