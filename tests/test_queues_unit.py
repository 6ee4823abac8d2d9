"""The queue poller's pure logic: kombu's Redis key layout, the registry's cap, reply parsing, the
poller keeping its last readings through failures."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kombu.exceptions
import pytest
import redis.exceptions
from kombu import Connection

from celery_events_exporter.queues import registry as registry_module
from celery_events_exporter.queues.management import parse_management_url, read_credentials
from celery_events_exporter.queues.poller import QueuePoller, error_reason
from celery_events_exporter.queues.reading import QueueReading
from celery_events_exporter.queues.redis import RedisLayout
from celery_events_exporter.queues.registry import QueueRegistry, consumed_queues, is_task_queue


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"global_keyprefix": "acme:"},
        {"priority_steps": list(range(10)), "sep": ":"},
        {"priority_steps": [2, 5], "global_keyprefix": "p/"},  # no step 0: kombu's quirk
        {"queue_order_strategy": "priority", "priority_steps": [0, 9]},
    ],
)
def test_layout_is_kombus(options: dict[str, Any]) -> None:
    """The keys are the ones kombu's own channel reads in ``_size`` (prefix added by its client)."""
    with Connection("redis://127.0.0.1:6379/0", transport_options=options) as conn:
        channel: Any = conn.transport.Channel.__new__(conn.transport.Channel)
        for key, value in options.items():
            setattr(channel, key, value)
        layout = RedisLayout.of(channel)
        prefix = options.get("global_keyprefix", "")
        expected = [prefix + channel._q_for_pri("jobs", step) for step in channel.priority_steps]
    assert layout.keys("jobs") == expected
    assert layout.binding_pattern() == prefix + "_kombu.binding.*"


def test_binding_pattern_escapes_glob_characters_of_the_prefix() -> None:
    assert RedisLayout(prefix="a*[b]?:").binding_pattern() == r"a\*\[b\]\?:_kombu.binding.*"


def test_bound_queues_from_binding_members() -> None:
    layout = RedisLayout()
    members: list[bytes | str] = [
        b"jobs\x06\x16\x06\x16jobs",
        "rk\x06\x16*\x06\x16other",
        b"broken",
        b"a\x06\x16b\x06\x16",
    ]
    assert layout.bound_queues(members) == ["jobs", "other"]


def test_celerys_own_queues_are_not_task_queues() -> None:
    assert is_task_queue("celery") and is_task_queue("celery_delayed")
    for name in ("celeryev.1234", "celery@host.celery.pidbox", "abc.reply.celery.pidbox",
                 "celery_delayed_0", "celery_delayed_27"):  # fmt: skip
        assert not is_task_queue(name)


def test_registry_caps_discovered_names_and_counts_each_refused_one_once() -> None:
    registry = QueueRegistry(["named", "named"], limit=3)
    registry.add(["a", "named", "", "celeryev.x", "b", "c", "d", "c", "d"])
    registry.add(["d", "a" * 2000])
    assert registry.names() == ["named", "a", "b"]
    assert registry.dropped == 3  # c, d and the over-long name
    assert len(registry) == 3


def test_named_queues_are_watched_past_the_cap() -> None:
    registry = QueueRegistry(["x", "y", "z"], limit=1)
    registry.add(["w"])
    assert registry.names() == ["x", "y", "z"] and registry.dropped == 1


def test_worker_queues_from_active_queues_replies() -> None:
    replies = {
        "celery@a": [{"name": "celery", "exchange": {}}, {"name": "jobs"}],
        "celery@b": [{"name": ""}, {"nope": 1}, "jobs"],
        "celery@c": "error",
        3: [{"name": "x"}],
    }
    assert consumed_queues(replies) == {"celery@a": ["celery", "jobs"], "celery@b": []}
    assert consumed_queues(None) == {}
    registry = QueueRegistry()
    registry.set_worker_queues(consumed_queues(replies))
    assert registry.worker_queues() == {
        "celery@a": frozenset({"celery", "jobs"}),
        "celery@b": frozenset(),
    }
    assert registry.names() == ["celery", "jobs"]


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (TimeoutError("timed out"), "timeout"),
        (type("TimeoutError", (Exception,), {})("redis"), "timeout"),
        (ConnectionRefusedError(111, "refused"), "connection"),
        (type("AuthenticationError", (Exception,), {})(), "auth"),
        (type("AccessRefused", (Exception,), {})(), "auth"),
        (ValueError("?"), "other"),
    ],
)
def test_error_reasons(exc: BaseException, reason: str) -> None:
    assert error_reason(exc) == reason


def test_the_reason_of_an_error_kombu_wrapped_is_its_cause() -> None:
    """kombu raises ``OperationalError(str(exc)) from exc`` for a transport's errors."""
    for cause, reason in (
        (redis.exceptions.TimeoutError("Timeout reading from socket"), "timeout"),
        (TimeoutError("timed out"), "timeout"),  # py-amqp's socket.timeout
        (redis.exceptions.AuthenticationError("invalid password"), "auth"),
        (ConnectionResetError(104, "reset"), "connection"),
        (KeyError("?"), "other"),
    ):
        try:
            try:
                raise cause
            except Exception as exc:
                raise kombu.exceptions.OperationalError(str(exc)) from exc
        except kombu.exceptions.OperationalError as wrapped:
            assert error_reason(wrapped) == reason, cause


class ScriptedReader:
    """A reader that answers from a script: a dict of readings, or an exception to raise."""

    def __init__(self, script: list[dict[str, QueueReading] | Exception]) -> None:
        self.script = script
        self.closed = 0
        self.asked: list[list[str]] = []

    def discover(self) -> Iterable[str]:
        return ["bound"]

    def read(self, names: list[str]) -> dict[str, QueueReading]:
        self.asked.append(names)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def close(self) -> None:
        self.closed += 1


def test_poller_keeps_the_last_readings_through_failures_and_reopens() -> None:
    reader = ScriptedReader(
        [{"q": QueueReading(3)}, TimeoutError("stalled"), {"q": QueueReading(1)}]
    )
    opened: list[ScriptedReader] = []

    def open_reader() -> ScriptedReader:
        opened.append(reader)
        return reader

    now = [100.0]
    heard: list[tuple[dict[str, QueueReading], float]] = []
    poller = QueuePoller(
        open_reader,
        QueueRegistry(["q"]),
        1.0,
        listener=lambda readings, at: heard.append((dict(readings), at)),
        sent_to=lambda: ["sent"],
        clock=lambda: now[0],
    )
    poller.poll_once()
    assert poller.status.readings == {"q": QueueReading(3)} and poller.status.read_at == 100.0
    assert reader.asked == [["q", "bound", "sent"]]
    now[0] = 101.0
    poller.poll_once()
    assert poller.status.readings == {"q": QueueReading(3)} and poller.status.read_at == 100.0
    assert poller.status.errors == {"timeout": 1} and reader.closed == 1
    now[0] = 102.0
    poller.poll_once()
    assert poller.status.readings == {"q": QueueReading(1)} and poller.status.read_at == 102.0
    assert len(opened) == 2
    assert heard == [({"q": QueueReading(3)}, 100.0), ({"q": QueueReading(1)}, 102.0)]


def test_management_url_without_credentials_only() -> None:
    assert parse_management_url(" http://rabbit:15672/ ") == "http://rabbit:15672"
    assert parse_management_url("https://rabbit/prefix") == "https://rabbit/prefix"
    with pytest.raises(ValueError, match="would show in ps"):
        parse_management_url("http://user:pw@rabbit:15672")
    for bad in ("rabbit:15672", "ftp://rabbit", "http://"):
        with pytest.raises(ValueError, match="expected"):
            parse_management_url(bad)


def test_management_credentials_file(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text("monitor:pa:ss\nignored\n")
    assert read_credentials(str(good)) == ("monitor", "pa:ss")
    bad = tmp_path / "bad"
    for text in ("", "no-colon", ":nouser"):
        bad.write_text(text)
        with pytest.raises(ValueError, match="USER:PASSWORD"):
            read_credentials(str(bad))
    with pytest.raises(ValueError, match="cannot read"):
        read_credentials(str(tmp_path / "missing"))


def test_worker_queues_are_bounded_the_longest_silent_forgotten_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry_module, "MAX_WORKERS", 2)
    registry = QueueRegistry()
    registry.set_worker_queues({"a": ["q"], "b": ["q"]})
    registry.set_worker_queues({"a": ["q"], "c": ["r"]})  # b has been silent longest
    assert registry.worker_queues() == {"a": frozenset({"q"}), "c": frozenset({"r"})}


def test_a_failing_listener_is_counted_and_the_poller_goes_on() -> None:
    def broken(readings: Any, at: float) -> None:
        raise KeyError("bug")

    reader = ScriptedReader([{"q": QueueReading(2)}, {"q": QueueReading(1)}])
    poller = QueuePoller(lambda: reader, QueueRegistry(["q"]), 1.0, listener=broken)
    poller.poll_once()
    poller.poll_once()
    assert poller.status.readings == {"q": QueueReading(1)}
    assert poller.status.errors == {"other": 2}
