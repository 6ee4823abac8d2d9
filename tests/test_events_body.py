"""celery_events_exporter.events.body: event bodies read as Celery's receivers read them."""

from __future__ import annotations

import math

import pytest

from celery_events_exporter.events.body import loads


def test_plain_json_is_read_by_the_fast_path() -> None:
    assert loads(b'[{"type": "task-sent", "uuid": "u1"}]') == [{"type": "task-sent", "uuid": "u1"}]


def test_non_finite_floats_are_read_as_kombus_json_writes_them() -> None:
    events = loads(b'[{"runtime": NaN}, {"runtime": Infinity}, {"runtime": -Infinity}]')
    runtimes = [event["runtime"] for event in events]
    assert math.isnan(runtimes[0])
    assert runtimes[1:] == [math.inf, -math.inf]


@pytest.mark.parametrize("body", [b"{", b"", b"nan", b"\xff\xfe", "[1,]"])
def test_what_neither_parser_reads_is_a_value_error(body: bytes | str) -> None:
    with pytest.raises(ValueError):
        loads(body)
