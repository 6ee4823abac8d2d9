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
from celery_events_exporter.queues import tracking as tracking_module
from celery_events_exporter.queues.management import parse_management_url, read_credentials
from celery_events_exporter.queues.poller import QueuePoller, error_reason
from celery_events_exporter.queues.reading import QueueReading
from celery_events_exporter.queues.redis import RedisLayout
from celery_events_exporter.queues.registry import QueueRegistry, consumed_queues, is_task_queue
from celery_events_exporter.queues.tracking import TaskTracking
from celery_events_exporter.state.labels import cut


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


def sent(uuid: str, queue: str, name: str = "tests.add") -> dict[str, Any]:
    return {"type": "task-sent", "uuid": uuid, "queue": queue, "name": name, "hostname": "client"}


def task(event_type: str, uuid: str, worker: str = "w1", **fields: Any) -> dict[str, Any]:
    return {"type": f"task-{event_type}", "uuid": uuid, "hostname": worker, **fields}


def tracking(**options: Any) -> TaskTracking:
    return TaskTracking(
        QueueRegistry(),
        max_tasks=options.pop("max_tasks", 100),
        max_length=options.pop("max_length", 200),
        **options,
    )


def test_oldest_waiting_task_per_queue_until_received() -> None:
    tracker = tracking()
    tracker([sent("a", "q1")], 10.0)
    tracker([sent("b", "q1"), sent("c", "q2")], 12.0)
    assert tracker.snapshot().oldest_sent == {"q1": 10.0, "q2": 12.0}
    tracker([task("received", "a", name="tests.add")], 13.0)
    assert tracker.snapshot().oldest_sent == {"q1": 12.0, "q2": 12.0}
    # A task revoked before any worker received it no longer waits either.
    tracker([task("revoked", "c")], 14.0)
    tracker([task("received", "b")], 14.0)
    assert tracker.snapshot().oldest_sent == {}  # absent, not 0
    assert tracker.registry.names() == ["q1", "q2"]


def test_polls_correct_the_waiting_tasks() -> None:
    tracker = tracking()
    tracker([sent("a", "q"), sent("b", "q"), sent("c", "r"), sent("d", "r")], 10.0)
    tracker([sent("e", "q"), sent("f", "r")], 20.0)
    # q read empty at 15: a and b were purged (no task-received ever comes); e came later.
    tracker.queues_read({"q": QueueReading(0)}, 15.0)
    # r's only list holds d as its oldest message: c is gone.
    tracker.queues_read({"r": QueueReading(2, oldest_ids=("d",))}, 25.0)
    assert tracker.snapshot().oldest_sent == {"q": 20.0, "r": 10.0}
    # A list whose oldest message is unknown corrects nothing.
    tracker.queues_read({"r": QueueReading(2, oldest_ids=("f", None))}, 25.0)
    tracker.queues_read({"r": QueueReading(2, oldest_ids=("f", "zzz"))}, 25.0)
    assert tracker.snapshot().oldest_sent == {"q": 20.0, "r": 10.0}
    tracker.queues_read({"r": QueueReading(1, oldest_ids=("f",))}, 25.0)
    assert tracker.snapshot().oldest_sent == {"q": 20.0, "r": 20.0}


def test_prefetched_is_received_and_not_started() -> None:
    tracker = tracking()
    tracker([task("received", u, name="tests.sleep") for u in "abcd"], 1.0)
    tracker([task("received", "e", worker="w2")], 1.0)
    tracker.sweep(2.0, {"w1", "w2", "w3"})
    assert tracker.snapshot().prefetched == {"w1": 4, "w2": 1, "w3": 0}
    tracker([task("started", "a"), task("started", "b"), task("succeeded", "a")], 3.0)
    tracker([task("revoked", "c"), task("started", "e", worker="w2")], 3.0)
    assert tracker.snapshot().prefetched == {"w1": 1, "w2": 0, "w3": 0}


def test_started_tasks_of_a_worker_gone_without_goodbye_are_orphaned() -> None:
    kept: list[tuple[bytes, float, int]] = []
    counted: list[list[tuple[str, str]]] = []
    tracker = tracking(
        on_orphaned=lambda body, at, n: kept.append((body, at, n)),
        count_orphaned=lambda tasks: counted.append(list(tasks)),
    )
    tracker([task("received", u, name="tests.sleep") for u in "abc"], 1.0)
    tracker([task("started", "a"), task("started", "b"), task("failed", "b")], 1.0)
    tracker([task("started", "x", worker="w2"), task("started", "y", worker="w3")], 1.0)
    tracker.sweep(2.0, {"w1", "w2", "w3"})
    tracker([{"type": "worker-offline", "hostname": "w3"}], 2.5)
    tracker.sweep(3.0, {"w2"})  # w1 fell silent; w3 said goodbye
    assert counted == [[("tests.sleep", "w1")]]
    assert tracker.snapshot().prefetched == {"w2": 0}
    assert kept == [
        (b'[{"type":"task-orphaned","uuid":"a","hostname":"w1","timestamp":3.0}]', 3.0, 1)
    ]
    tracker.sweep(4.0, {"w2"})  # counted once
    tracker.sweep(5.0, set())
    assert counted == [[("tests.sleep", "w1")], [("unknown", "w2")]]


def test_tracked_names_and_hostnames_are_cut_as_the_state_cuts_them() -> None:
    counted: list[tuple[str, str]] = []
    tracker = tracking(max_length=16, count_orphaned=counted.extend)
    long_host, long_name = "w@" + "h" * 100, "tests." + "n" * 100
    tracker([task("received", "a", worker=long_host, name=long_name)], 1.0)
    tracker([task("received", "b", worker=long_host), task("started", "b", worker=long_host)], 1.0)
    tracker([task("started", "c", worker="é" * 40)], 1.0)
    # The state's online workers are its cut hostnames: the prefetched count meets them.
    tracker.sweep(2.0, {cut(long_host, 16), cut("é" * 40, 16)})
    assert tracker.snapshot().prefetched == {cut(long_host, 16): 1, cut("é" * 40, 16): 0}
    tracker.sweep(3.0, set())
    assert sorted(counted) == [("unknown", "w@hhhhhhhhhhh…"), ("unknown", "éééééé…")]
    # A queue name past the cap is no queue's: it is not followed or polled.
    tracker([sent("d", "q" * 17), sent("e", "q" * 16)], 4.0)
    assert tracker.snapshot().oldest_sent == {"q" * 16: 4.0}
    assert tracker.registry.names() == ["q" * 16]
    assert tracker.tracked == 1  # e waiting (a went with its worker: the broker redelivers it)


def test_tracking_is_bounded_and_ignores_malformed_events() -> None:
    tracker = tracking(max_tasks=3)
    tracker([sent(str(i), "q") for i in range(10)], 1.0)
    tracker([task("received", str(i)) for i in range(10, 20)], 1.0)
    malformed: list[Any] = [
        None,
        {"type": 3},
        {"type": "task-sent", "uuid": "u", "hostname": "c", "queue": 7},
        {"type": "task-received", "uuid": "v"},
        "x",
        {"type": "worker-offline"},
    ]
    tracker(malformed, 1.0)
    assert tracker.tracked == 6
    assert tracker.snapshot().oldest_sent == {"q": 1.0}


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


def test_goodbyes_forget_tasks_at_the_sweep_or_at_the_workers_next_start() -> None:
    counted: list[tuple[str, str]] = []
    tracker = tracking(count_orphaned=counted.extend)
    tracker([task("received", "a", worker="w1"), task("received", "b", worker="w2")], 1.0)
    tracker([task("started", "b", worker="w2"), task("received", "c", worker="w3")], 1.0)
    tracker.sweep(2.0, {"w1", "w2", "w3"})
    assert tracker.snapshot().prefetched == {"w1": 1, "w2": 0, "w3": 1}
    # w1 and w2 stop cleanly; w1 starts again and receives a task before the next sweep.
    goodbyes = [{"type": "worker-offline", "hostname": host} for host in ("w1", "w2")]
    tracker(goodbyes, 3.0)
    tracker([task("received", "d", worker="w1")], 3.5)
    assert tracker.tracked == 3  # b (w2, forgotten at the sweep), c, d: a went with w1's stop
    tracker.sweep(4.0, {"w1", "w3"})
    # b was running on w2 when it said goodbye: finished, not orphaned.
    assert counted == []
    assert tracker.snapshot().prefetched == {"w1": 1, "w3": 1}
    assert tracker.tracked == 2


def test_goodbyes_past_the_bound_are_forgotten_at_once() -> None:
    tracker = tracking(max_tasks=5_000)
    hosts = [f"w{i}" for i in range(tracking_module.MAX_DEPARTED + 1)]
    tracker([task("received", f"u{i}", worker=host) for i, host in enumerate(hosts)], 1.0)
    tracker([{"type": "worker-offline", "hostname": host} for host in hosts], 2.0)
    assert tracker.tracked == 0  # the goodbye past the bound forgot them all, in one pass
