"""The recent-task store, payload masking and the /api/tasks query language, without processes.

Events are shaped like the ones Celery 5.7 sends (see /work/shared/FIELD-NOTES.md): task-received
carries name, args and kwargs as repr strings, task-started only the uuid, and so on. They go
through the real State so that the store sees what the exporter's ingest thread would give it.
"""

from __future__ import annotations

import gc
import itertools
import re
import threading
import time
import tracemalloc
from typing import Any

import orjson
import pytest

from celery_events_exporter.config import DEFAULT_QUEUE_WAIT_BUCKETS, DEFAULT_RUNTIME_BUCKETS
from celery_events_exporter.events.exceptions import MAX_EXCEPTION_CLASS_LENGTH, exception_class
from celery_events_exporter.exposition.catalogue import EXPORTER_RECENT_TASK_EVENTS_DROPPED
from celery_events_exporter.state import State, StateSettings, TaskChange, WorkerState
from celery_events_exporter.tasks import bounds
from celery_events_exporter.tasks.collector import RecentTasksCollector
from celery_events_exporter.tasks.redact import (
    DEFAULT_SECRET_KEY_PATTERNS,
    ELLIPSIS,
    MASK,
    MAX_DEPTH,
    Redactor,
    compile_secret_keys,
    secret_key_patterns,
)
from celery_events_exporter.tasks.store import (
    STORED_TEXT_LIMIT,
    WINDOW_BYTES_PER_TASK,
    WINDOW_EVENTS_PER_TASK,
    RecentTasks,
    TaskRecord,
)
from celery_events_exporter.web import api as web_api
from celery_events_exporter.web.api import (
    DEFAULT_LIMIT,
    PAYLOADS_HIDDEN,
    TASK_ROW_KEYS,
    Api,
    ApiError,
    TaskQuery,
    iso,
    parse_task_query,
)
from celery_events_exporter.web.stats import WebStats

WORKER = "celery@18e5d5189283"
UUID = "c2e583bc-1dc9-4193-9df5-fe412aa0b180"
KWARGS = {
    "input_image": {"protocol": "file", "path": "input/1732010550292-480.jpg"},
    "output_image": {"protocol": "file", "path": "output/878ac326.jpg"},
    "lifespan": 3600,
}
RESULT = {**KWARGS, "chronos": {"total": 2.219586}}
T0 = 1_732_010_550.472


def fed(max_tasks: int = 100) -> tuple[State, RecentTasks]:
    store = RecentTasks(max_tasks)
    settings = StateSettings(DEFAULT_RUNTIME_BUCKETS, DEFAULT_QUEUE_WAIT_BUCKETS)
    state = State(settings)
    state.subscribe(store.take)
    return state, store


def feed(state: State, *events: dict[str, Any], received_at: float = T0 + 100) -> None:
    for event in events:
        state.apply(event, received_at)


def event(kind: str, uuid: str = UUID, at: float = T0, **fields: Any) -> dict[str, Any]:
    return {
        "type": f"task-{kind}",
        "uuid": uuid,
        "hostname": fields.pop("hostname", WORKER),
        "timestamp": at,
        "utcoffset": 0,
        "pid": 7,
        "clock": 1,
        **fields,
    }


def lifecycle(uuid: str = UUID, at: float = T0) -> list[dict[str, Any]]:
    return [
        event("sent", uuid, at - 0.5, hostname="gen1@client", name="blurit.image",
              args="()", kwargs=repr(KWARGS), retries=0, queue="celery"),
        event("received", uuid, at, name="blurit.image", args="()", kwargs=repr(KWARGS),
              retries=0, eta=None, expires=None, root_id=uuid, parent_id=None),
        event("started", uuid, at + 0.006),
        event("succeeded", uuid, at + 2.5, result=repr(RESULT), runtime=2.219586),
    ]  # fmt: skip


def as_dict(record: TaskRecord) -> dict[str, Any]:
    return {slot: getattr(record, slot) for slot in TaskRecord.__slots__}


# -- the store ------------------------------------------------------------------------------------


def test_a_task_in_order_becomes_one_complete_record() -> None:
    state, store = fed()
    feed(state, *lifecycle())
    record = store.get(UUID)
    assert record is not None
    assert as_dict(record) == {
        "uuid": UUID,
        "name": "blurit.image",
        "state": "SUCCESS",
        "state_timestamp": T0 + 2.5,
        "args": "()",
        "kwargs": repr(KWARGS),
        "result": repr(RESULT),
        "exception": None,
        "exception_at": None,
        "traceback": None,
        "retries": 0,
        "worker": WORKER,
        "queue": "celery",
        "eta": None,
        "expires": None,
        "root_id": UUID,
        "parent_id": None,
        "runtime": 2.219586,
        "first_seen": T0 + 100,
        "sent": T0 - 0.5,
        "received": T0,
        "started": T0 + 0.006,
        "succeeded": T0 + 2.5,
        "failed": None,
        "retried": None,
        "revoked": None,
        "rejected": None,
        "orphaned": None,
    }


def test_every_arrival_order_gives_the_same_record() -> None:
    in_order = fed()
    feed(in_order[0], *lifecycle())
    expected = as_dict(in_order[1].get(UUID))  # type: ignore[arg-type]
    orders = list(itertools.permutations(lifecycle()))
    assert len(orders) == 24
    for order in orders:
        state, store = fed()
        feed(state, *order)
        record = store.get(UUID)
        assert record is not None
        assert as_dict(record) == expected, [e["type"] for e in order]


def test_a_late_started_event_does_not_undo_a_failure() -> None:
    state, store = fed()
    feed(
        state,
        event("received", at=T0, name="tests.fail", args="('boom',)", kwargs="{}"),
        event("failed", at=T0 + 1, exception="ValueError('boom')",
              traceback="Traceback (most recent call last):\nValueError: boom\n"),
        event("started", at=T0 + 0.5),
    )  # fmt: skip
    record = store.get(UUID)
    assert record is not None
    assert (record.state, record.started, record.failed) == ("FAILURE", T0 + 0.5, T0 + 1)
    assert record.exception == "ValueError('boom')"
    assert record.traceback == "Traceback (most recent call last):\nValueError: boom\n"


def test_retries_keep_the_uuid_and_end_in_the_last_state() -> None:
    state, store = fed()
    feed(
        state,
        event("received", at=T0, name="tests.flaky", args="(2,)", kwargs="{}", retries=0),
        event("started", at=T0 + 0.01),
        event("retried", at=T0 + 0.02, exception="Retry('in 0.1s')", traceback="tb"),
        event("received", at=T0 + 0.2, name="tests.flaky", args="(2,)", kwargs="{}", retries=1),
        event("started", at=T0 + 0.21),
        event("succeeded", at=T0 + 0.3, result="2", runtime=0.05),
    )
    record = store.get(UUID)
    assert record is not None
    assert (record.state, record.retries, record.received, record.started) == (
        "SUCCESS", 1, T0 + 0.2, T0 + 0.21,
    )  # fmt: skip
    assert (record.retried, record.result, record.runtime) == (T0 + 0.02, "2", 0.05)
    # The retry's exception told why it was retried; the task succeeded after all.
    assert (record.exception, record.traceback) == (None, None)


def test_a_late_retried_event_does_not_give_a_success_an_exception() -> None:
    state, store = fed()
    feed(
        state,
        event("received", at=T0, name="tests.flaky", args="(1,)", kwargs="{}", retries=0),
        event("received", at=T0 + 0.2, name="tests.flaky", args="(1,)", kwargs="{}", retries=1),
        event("succeeded", at=T0 + 0.3, result="1", runtime=0.05),
        # The first run's pool process published its batch last.
        event("retried", at=T0 + 0.02, exception="IOError('flaky disk')", traceback="tb"),
    )
    record = store.get(UUID)
    assert record is not None
    assert (record.state, record.exception, record.traceback) == ("SUCCESS", None, None)


def test_a_failure_after_retries_keeps_the_last_exception() -> None:
    state, store = fed()
    feed(
        state,
        event("received", at=T0, name="tests.flaky", args="()", kwargs="{}", retries=0),
        event("failed", at=T0 + 1, exception="KeyError('b')", traceback="tb-b"),
        event("retried", at=T0 + 0.5, exception="KeyError('a')", traceback="tb-a"),
    )
    record = store.get(UUID)
    assert record is not None
    assert (record.exception, record.traceback) == ("KeyError('b')", "tb-b")


def test_a_rejected_task_ends_rejected_after_its_failure() -> None:
    state, store = fed()
    feed(
        state,
        event("received", at=T0, name="tests.reject", args="()", kwargs="{}"),
        event("started", at=T0 + 0.1),
        event("failed", at=T0 + 0.2, exception="reject requeue=False: not today", traceback="tb"),
        event("rejected", at=T0 + 0.2, requeue=False),
    )
    record = store.get(UUID)
    assert record is not None
    assert (record.state, record.rejected, record.exception) == (
        "REJECTED", T0 + 0.2, "reject requeue=False: not today",
    )  # fmt: skip
    [row] = orjson.loads(api_for(state, store, expose=False).tasks("")[0])
    assert (row["state"], row["exception_type"], row["exception"]) == ("REJECTED", "Reject", "")
    assert state.snapshot(T0).exceptions == {("tests.reject", "Reject"): 1}


def test_the_clients_clock_cannot_hold_a_task_pending() -> None:
    state, store = fed()
    # The client's clock runs a minute ahead of the worker's.
    feed(
        state,
        event("sent", at=T0 + 60, hostname="gen1@client", name="tests.add", args="(1, 2)"),
        event("received", at=T0, name="tests.add", args="(1, 2)", kwargs="{}"),
    )
    record = store.get(UUID)
    assert record is not None
    assert (record.state, record.worker) == ("RECEIVED", WORKER)
    feed(state, event("sent", at=T0 + 61, hostname="gen1@client", name="tests.add"))
    record = store.get(UUID)  # merged on read
    assert record is not None
    assert record.state == "RECEIVED"


def test_a_task_first_seen_by_its_end_still_gets_the_name_it_was_sent_with() -> None:
    state, store = fed()
    feed(state, event("succeeded", at=T0, result="3", runtime=0.1))
    record = store.get(UUID)
    assert record is not None
    assert (record.name, record.state) == (None, "SUCCESS")
    feed(state, event("received", at=T0 - 1, name="tests.add", args="(1, 2)", kwargs="{}"))
    record = store.get(UUID)
    assert record is not None
    assert (record.name, record.state, record.args) == ("tests.add", "SUCCESS", "(1, 2)")


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "task-received", "hostname": WORKER},
        {"type": "task-received", "hostname": WORKER, "uuid": 42},
        {"type": "task-received", "hostname": WORKER, "uuid": ""},
        {"type": "task-started", "hostname": WORKER, "uuid": UUID, "timestamp": "soon"},
        {"type": "task-succeeded", "hostname": WORKER, "uuid": UUID, "runtime": "fast",
         "result": {"not": "a repr"}},
        {"type": "task-failed", "hostname": WORKER, "uuid": UUID, "exception": 12,
         "traceback": ["x"]},
        {"type": "task-received", "hostname": WORKER, "uuid": UUID, "name": 5, "retries": "x",
         "eta": 3},
        {"type": "task-custom-progress", "hostname": WORKER, "uuid": UUID},
    ],
)  # fmt: skip
def test_odd_events_never_raise(bad: dict[str, Any]) -> None:
    state, store = fed()
    feed(state, bad)
    assert state.snapshot(T0).rejected.get("invalid_field", 0) == 0
    # Custom events (Task.send_event) carry no state of Celery's: not a task row of their own.
    known = bad["type"] != "task-custom-progress"
    assert len(store.records()) == (1 if known and bad.get("uuid") == UUID else 0)


def test_eviction_drops_the_oldest_and_a_re_received_task_is_young_again() -> None:
    state, store = fed(max_tasks=3)
    uuids = [f"task-{i}" for i in range(4)]
    for i, uuid in enumerate(uuids[:3]):
        feed(state, event("received", uuid, T0 + i, name="tests.add", args="()", kwargs="{}"))
    # task-0 is retried: received again, it becomes the youngest.
    feed(state, event("received", "task-0", T0 + 5, name="tests.add", args="()", kwargs="{}"))
    feed(state, event("received", "task-3", T0 + 6, name="tests.add", args="()", kwargs="{}"))
    assert [record.uuid for record in store.records()] == ["task-2", "task-0", "task-3"]
    assert store.evicted == 1
    # A late event of an evicted task starts a new, partial record (and evicts another).
    feed(state, event("succeeded", "task-1", T0 + 7, result="1", runtime=0.1))
    assert [record.uuid for record in store.records()] == ["task-0", "task-3", "task-1"]


def test_memory_stays_flat_however_many_tasks_pass() -> None:
    state, store = fed(max_tasks=1000)
    kwargs = repr(KWARGS)

    def burst(start: int, count: int) -> None:
        for i in range(start, start + count):
            if i % 500 == 0:
                store.records()  # a reader now and then: the records are merged, not only kept
            uuid = f"{i:08d}-1dc9-4193-9df5-fe412aa0b180"
            feed(
                state,
                event("received", uuid, T0 + i, name="blurit.image", args="()", kwargs=kwargs),
                event("started", uuid, T0 + i + 0.1),
                event("succeeded", uuid, T0 + i + 0.2, result=repr(RESULT), runtime=0.1),
            )

    burst(0, 2000)  # fill the store and the state's own bounded structures
    gc.collect()
    tracemalloc.start()
    try:
        burst(2000, 5000)
        gc.collect()
        after_5k, _ = tracemalloc.get_traced_memory()
        burst(7000, 20000)
        gc.collect()
        after_25k, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    store.records()
    assert len(store) == 1000
    assert (store.evicted, store.dropped) == (26000, 0)
    # 20 000 more tasks through a full store: no growth beyond allocator noise (a single kept
    # task record with its strings is > 600 bytes, so a leak of one per task would be > 12 MB).
    assert after_25k - after_5k < 200_000, (after_5k, after_25k)


def test_a_received_event_brings_its_schedule_and_lineage() -> None:
    state, store = fed()
    eta, expires = "2026-11-27T09:00:00+00:00", "2026-11-27T10:00:00+00:00"
    feed(
        state,
        event("received", name="tests.add", eta=eta, expires=expires, root_id="r", parent_id="p"),
        # Received again (a retry) with values that are not text: the earlier ones stay.
        event("received", at=T0 + 1, name="tests.add", eta=3, root_id=None),
    )
    record = store.get(UUID)
    assert record is not None
    assert (record.eta, record.expires, record.root_id, record.parent_id) == (
        eta,
        expires,
        "r",
        "p",
    )


def test_what_the_state_rejected_in_a_kept_message_is_left_out_of_the_records() -> None:
    state, store = fed()
    odd: list[Any] = [
        {"type": ["task-received"], "uuid": "odd-1", "hostname": WORKER},  # unhashable type
        {"type": "task-received", "uuid": {"a": 1}, "hostname": WORKER},
        {"type": "task-received", "uuid": "odd-2", "hostname": ["h"]},
        ["not", "an", "event"],
        None,
    ]
    state.apply_many([event("received", name="tests.add"), *odd], T0 + 100)
    assert sum(state.snapshot(T0 + 100).rejected.values()) == len(odd)
    assert [(r.uuid, r.name, r.state) for r in store.records()] == [(UUID, "tests.add", "RECEIVED")]


def test_unread_messages_stay_within_the_window_and_an_overrun_is_counted() -> None:
    state, store = fed(max_tasks=2)  # a window of 12 task events
    assert store.window_events == 12
    for i in range(20):  # nobody reads the store meanwhile
        feed(state, event("received", f"task-{i}", T0 + i, name="tests.add", args=f"({i},)"))
    assert (store.pending, store.dropped, len(store)) == (12, 8, 0)
    records = store.records()
    assert [(r.uuid, r.args) for r in records] == [("task-18", "(18,)"), ("task-19", "(19,)")]
    assert (store.pending, store.evicted) == (0, 10)
    # Messages already merged leave the window without counting as dropped.
    for i in range(20, 32):
        feed(state, event("started", f"task-{i % 2 + 18}", T0 + i))
    assert (store.pending, store.dropped) == (12, 8)
    assert [r.state for r in store.records()] == ["STARTED", "STARTED"]
    assert store.dropped == 8


def test_the_dropped_counter_states_the_window_the_store_really_has() -> None:
    text = EXPORTER_RECENT_TASK_EVENTS_DROPPED.help
    assert f"{WINDOW_EVENTS_PER_TASK} x --max-recent-tasks" in text
    assert f"{WINDOW_BYTES_PER_TASK // 1024} KiB x --max-recent-tasks" in text


def test_huge_tracebacks_cannot_make_the_window_hold_more_than_its_bytes() -> None:
    state, store = fed(max_tasks=2)  # 8 KiB of JSON at most, beside the newest message
    huge = "x" * 5000
    for i in range(5):
        feed(state, event("failed", f"task-{i}", T0 + i, exception="E()", traceback=huge))
        assert store._window_bytes <= store.window_bytes or len(store._window) == 1
    assert store.dropped == 4  # each message alone is over half the window
    records = store.records()
    assert [(r.uuid, len(r.traceback or "")) for r in records] == [("task-4", STORED_TEXT_LIMIT)]


def test_a_task_whose_early_events_left_the_window_shows_what_came_later() -> None:
    state, store = fed(max_tasks=1)  # a window of 6 task events
    feed(state, event("received", at=T0, name="tests.add", args="(1, 2)", kwargs="{}"))
    for i in range(1, 7):
        feed(state, event("started", at=T0 + i))
    record = store.get(UUID)
    assert record is not None
    assert (record.name, record.args, record.state, record.started) == (
        None,
        None,
        "STARTED",
        T0 + 6,
    )
    assert store.dropped == 1


def test_huge_payloads_are_cut_on_arrival() -> None:
    state, store = fed()
    huge = "x" * (STORED_TEXT_LIMIT * 3)
    feed(
        state,
        event("received", at=T0, name="tests.big", args=huge, kwargs=huge),
        event("failed", at=T0 + 1, exception=huge, traceback="head\n" + huge + "\nValueError: x"),
    )
    record = store.get(UUID)
    assert record is not None
    assert len(record.args) == len(record.kwargs) == len(record.exception or "")
    assert len(record.args) == STORED_TEXT_LIMIT
    assert record.traceback is not None and len(record.traceback) == STORED_TEXT_LIMIT
    assert record.traceback.endswith("\nValueError: x")


@pytest.mark.parametrize("worker_label", [True, False])
def test_worker_counts_follow_the_task_events(worker_label: bool) -> None:
    state, _ = fed()
    state.settings.worker_label = worker_label
    feed(state, *lifecycle("a"), *lifecycle("b"))
    feed(state, event("received", "c", name="tests.fail"), event("failed", "c", exception="E()"))
    counts = state.worker_task_counts()
    assert counts == {
        WORKER: {"task-received": 3, "task-started": 2, "task-succeeded": 2, "task-failed": 1}
    }  # task-sent comes from the client: not a worker's count


def test_the_store_refuses_a_zero_bound() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RecentTasks(0)


# -- masking and cutting --------------------------------------------------------------------------

REDACTOR = Redactor(compile_secret_keys(DEFAULT_SECRET_KEY_PATTERNS), max_length=1024)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Literal reprs are parsed: masked at any depth, other values untouched.
        (repr(KWARGS), repr(KWARGS)),
        (repr({**KWARGS, "password": "hunter2"}), repr({**KWARGS, "password": MASK})),
        (
            repr({"headers": {"Authorization": "Bearer abc", "Accept": "*/*"},
                  "items": [{"api_key": "k1"}, {"API-Key": 7}], "Cookie": "sid=1"}),
            repr({"headers": {"Authorization": MASK, "Accept": "*/*"},
                  "items": [{"api_key": MASK}, {"API-Key": MASK}], "Cookie": MASK}),
        ),
        (repr(("user@example.com", {"client_secret": "s"})),
         repr(("user@example.com", {"client_secret": MASK}))),
        (repr({"author": "Ann", "auth": "x", "oauth_token": "t"}),
         repr({"author": "Ann", "auth": MASK, "oauth_token": MASK})),
        (repr({"broker": "redis://user:s3cret@redis:6379/0"}),
         repr({"broker": f"redis://user:{MASK}@redis:6379/0"})),
        # Not literals: the text scanner masks key/value pairs, quoted or bare.
        ("{'when': datetime.date(2024, 11, 19), 'password': 'a, b}', 'n': 1}",
         f"{{'when': datetime.date(2024, 11, 19), 'password': '{MASK}', 'n': 1}}"),
        ("Login(user='ann', password='pw', token=abc123, session=Session(id=3), x=1)",
         f"Login(user='ann', password='{MASK}', token={MASK}, session={MASK}, x=1)"),
        ("{'cfg': <Cfg at 0x7f>, 'secret': {'a': [1, '}'], 'b': 2}, 'z': 0}",
         f"{{'cfg': <Cfg at 0x7f>, 'secret': {MASK}, 'z': 0}}"),
        # Cut short by Celery's saferepr: the secret runs to the end of the text.
        ("{'input': 'x', 'token': 'abcdefghijklmnop...", f"{{'input': 'x', 'token': '{MASK}'"),
        ('{"token": "it\'s", "ok": 1, "Password": None}',
         repr({"token": MASK, "ok": 1, "Password": MASK})),
        ("{\"token\": \"it's\", 'when': now(), \"Password\": None}",
         f"{{\"token\": \"{MASK}\", 'when': now(), \"Password\": {MASK}}}"),
        # The wider default list; short words only as whole words, camelCase read as words.
        (repr({"passphrase": 1, "pass": 2, "access_key": 3, "jwt": 4, "bearer": 5, "otp": 6,
               "pin": 7, "signing_key": 8, "refresh": 9, "authKey": 10, "Passwort": 11,
               "mot_de_passe": 12, "userPin": 13, "X-Refresh-Token": 14}),
         repr({"passphrase": MASK, "pass": MASK, "access_key": MASK, "jwt": MASK,
               "bearer": MASK, "otp": MASK, "pin": MASK, "signing_key": MASK, "refresh": MASK,
               "authKey": MASK, "Passwort": MASK, "mot_de_passe": MASK, "userPin": MASK,
               "X-Refresh-Token": MASK})),
        (repr({"passport": "P1", "shipping": "S", "compass": "C", "opinion": "O", "author": "A"}),
         repr({"passport": "P1", "shipping": "S", "compass": "C", "opinion": "O", "author": "A"})),
        # A secret inside a string value that holds JSON, or key=value text.
        (repr(('{"user": "ann", "password": "hunter2"}',)),
         repr((f'{{"user": "ann", "password": "{MASK}"}}',))),
        (repr({"note": "retry with token=abc123 later"}),
         repr({"note": f"retry with token={MASK} later"})),
        # Key/value pair lists (HTTP headers as requests and aiohttp take them).
        (repr(([["Authorization", "Bearer X"], ["Accept", "*/*"]],)),
         repr(([["Authorization", MASK], ["Accept", "*/*"]],))),
        (repr({"headers": (("Cookie", "sid=1"), ("X-Api-Key", "k"), ("Host", "h"))}),
         repr({"headers": (("Cookie", MASK), ("X-Api-Key", MASK), ("Host", "h"))})),
        # Command lines: --flag value, --flag=value, in a list or in one string.
        (repr((["--user", "ann", "--password", "X", "-v"],)),
         repr((["--user", "ann", "--password", MASK, "-v"],)),),
        (repr(("deploy", "--password=X", "--token=Y", "--dry-run")),
         repr(("deploy", f"--password={MASK}", f"--token={MASK}", "--dry-run"))),
        (repr("pg_dump --host db --password s3cret --verbose"),
         repr(f"pg_dump --host db --password {MASK} --verbose")),
        # Credentials recognised by their shape, under any key.
        (repr({"header": "Bearer abcdefghijklmnop"}), repr({"header": f"Bearer {MASK}"})),
        (repr(("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",)), repr((MASK,))),
        # Not literals, cut by Celery: the same in the text scanner.
        ("(['--password', 'X', '--user', 'ann'], <object at 0x1>",
         f"(['--password', '{MASK}', '--user', 'ann'], <object at 0x1>"),
        ("Conn(url='x', pin=1234, passport='P')", f"Conn(url='x', pin={MASK}, passport='P')"),
        # Positional secrets cannot be recognised: that is why payloads are opt-in.
        ("('hunter2',)", "('hunter2',)"),
        ("('ann', 'hunter2', 'db.example.com')", "('ann', 'hunter2', 'db.example.com')"),
    ],
)  # fmt: skip
def test_secrets_are_masked(text: str, expected: str) -> None:
    assert REDACTOR.mask(text) == expected


def test_free_text_is_masked_too() -> None:
    assert (
        REDACTOR.mask_text("ValueError(\"login failed with password='p4ss', user='ann'\")")
        == f"ValueError(\"login failed with password='{MASK}', user='ann'\")"
    )


def test_json_payloads_of_old_clients_are_masked() -> None:
    assert REDACTOR.payload({"token": "t", "n": [1, 2]}) == repr({"token": MASK, "n": [1, 2]})
    assert REDACTOR.payload(None) == ""


def test_custom_secret_key_patterns_extend_the_default_or_replace_it() -> None:
    added = Redactor(compile_secret_keys(secret_key_patterns([r"^ssn$", "iban"])), 1024)
    assert added.mask(repr({"ssn": "1", "IBAN_no": "2", "password": "3", "n": 4})) == repr(
        {"ssn": MASK, "IBAN_no": MASK, "password": MASK, "n": 4}
    )
    patterns = secret_key_patterns([r"^ssn$", "iban"], defaults=False)
    assert patterns == (r"^ssn$", "iban")
    custom = Redactor(compile_secret_keys(patterns), 1024)
    assert custom.mask(repr({"ssn": "1", "IBAN_no": "2", "password": "3"})) == repr(
        {"ssn": MASK, "IBAN_no": MASK, "password": "3"}
    )
    with pytest.raises(ValueError, match="bad secret key pattern"):
        compile_secret_keys(["("])


def test_long_values_are_cut_and_tracebacks_keep_their_end() -> None:
    short = Redactor(compile_secret_keys(DEFAULT_SECRET_KEY_PATTERNS), max_length=20)
    assert short.payload(repr("a" * 30)) == "'" + "a" * 19 + ELLIPSIS
    assert short.payload(repr("a" * 18)) == repr("a" * 18)
    assert short.truncate_tail("x" * 30 + "ValueError: boom") == ELLIPSIS + "x" * 4 + (
        "ValueError: boom"
    )


def test_pathological_reprs_do_not_raise() -> None:
    deep = "[" * 5000 + "]" * 5000
    assert REDACTOR.mask(deep) == deep
    # JSON data (old clients) nested deeper than MAX_DEPTH is served cut, not a RecursionError.
    nested: Any = ["leaf"]
    for _ in range(1000):
        nested = [nested]
    masked = REDACTOR.mask(nested)
    assert masked == "[" * MAX_DEPTH + repr(ELLIPSIS) + "]" * MAX_DEPTH
    assert REDACTOR.mask("{'password': ") == "{'password': "
    assert REDACTOR.mask("'") == "'"


# -- the query language and the rows --------------------------------------------------------------


def test_query_defaults_and_every_parameter() -> None:
    assert parse_task_query("") == TaskQuery()
    assert TaskQuery().limit == DEFAULT_LIMIT
    assert parse_task_query(
        "uuid=C2E5&name=Blurit&state=success,Failure&worker=18E5&search=IMG&limit=5"
        "&from=1732010550000&to=2024-11-19T11:00:00Z"
    ) == TaskQuery(
        uuid="c2e5",
        name="blurit",
        states=frozenset({"SUCCESS", "FAILURE"}),
        worker="18e5",
        search="img",
        limit=5,
        since=1_732_010_550.0,
        until=1_732_014_000.0,
    )
    # Grafana sends every box, empty ones too: empty means no filter.
    assert parse_task_query("uuid=&name=&state=&worker=&search=&from=&to=") == TaskQuery()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("stat=SUCCESS", "unknown query parameter(s): stat; supported: uuid, name, state"),
        ("state=DONE", "unknown state 'DONE'; states are PENDING, RECEIVED, STARTED"),
        ("limit=ten", "limit must be a whole number, got 'ten'"),
        ("limit=0", "limit must be within 1-10000, got 0"),
        ("limit=10001", "limit must be within 1-10000, got 10001"),
        ("limit=1000000", "limit must be within 1-10000, got 1000000"),
        ("name=a&name=b", "query parameter(s) given more than once: name"),
        ("from=yesterday", "from must be epoch milliseconds or ISO 8601"),
        ("to=nan", "to must be finite"),
        ("from=2000&to=1000", "from must not be later than to"),
    ],
)
def test_bad_queries_say_what_is_wrong(query: str, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_task_query(query)
    assert str(caught.value).startswith(message), str(caught.value)


def test_iso_timestamps_are_utc_with_milliseconds() -> None:
    assert iso(T0) == "2024-11-19T10:02:30.472Z"
    assert iso(None) is None
    assert iso(1e300) is None


def api_for(state: State, store: RecentTasks, expose: bool, max_length: int = 1024) -> Api:
    redactor = Redactor(compile_secret_keys(DEFAULT_SECRET_KEY_PATTERNS), max_length)
    return Api(state, store, redactor, expose_payloads=expose, clock=lambda: T0 + 101)


def test_rows_hide_payloads_unless_asked() -> None:
    state, store = fed()
    secret_kwargs = {**KWARGS, "api_token": "tok-123"}
    feed(
        state,
        event("received", at=T0, name="blurit.image", args="()", kwargs=repr(secret_kwargs)),
        event("started", at=T0 + 0.006),
        event("succeeded", at=T0 + 2.5, result=repr(RESULT), runtime=2.219586),
    )
    body, headers = api_for(state, store, expose=False).tasks(f"uuid={UUID}")
    [hidden] = orjson.loads(body)
    assert (hidden["args"], hidden["kwargs"], hidden["result"]) == ("", "", "")
    assert headers["X-Task-Payloads"] == PAYLOADS_HIDDEN
    assert "--expose-task-payloads" in headers["X-Task-Payloads"]

    body, headers = api_for(state, store, expose=True).tasks(f"uuid={UUID}")
    [shown] = orjson.loads(body)
    assert shown == {
        "name": "blurit.image",
        "uuid": UUID,
        "state": "SUCCESS",
        "args": "()",
        "kwargs": repr({**KWARGS, "api_token": MASK}),
        "result": repr(RESULT),
        "exception_type": None,
        "exception": "",
        "traceback": "",
        "sent": None,
        "received": "2024-11-19T10:02:30.472Z",
        "started": "2024-11-19T10:02:30.478Z",
        "succeeded": "2024-11-19T10:02:32.972Z",
        "failed": None,
        "retried": None,
        "revoked": None,
        "rejected": None,
        "runtime": 2.219586,
        "worker": WORKER,
        "retries": None,
        "queue": None,
        "eta": None,
        "expires": None,
        "root_id": None,
        "parent_id": None,
        "timestamp": "2024-11-19T10:02:32.972Z",
    }
    assert headers["X-Task-Payloads"].startswith("shown")
    assert list(shown) == list(TASK_ROW_KEYS)


def test_rows_are_newest_received_first_and_limited() -> None:
    state, store = fed()
    # Arrival order differs from the workers' order: sorting is by the received timestamp.
    for i in (2, 0, 3, 1):
        feed(state, event("received", f"t{i}", T0 + i, name="tests.add", args="()", kwargs="{}"))
    api = api_for(state, store, expose=False)
    assert [row["uuid"] for row in orjson.loads(api.tasks("")[0])] == ["t3", "t2", "t1", "t0"]
    assert [row["uuid"] for row in orjson.loads(api.tasks("limit=2")[0])] == ["t3", "t2"]
    window = f"from={int((T0 + 1) * 1000)}&to={int((T0 + 2) * 1000)}"
    assert [row["uuid"] for row in orjson.loads(api.tasks(window)[0])] == ["t2", "t1"]


def test_a_failures_runtime_is_started_to_failed_and_its_exception_is_masked() -> None:
    state, store = fed()
    feed(
        state,
        event("received", at=T0, name="tests.login", args="()", kwargs="{}"),
        event("started", at=T0 + 1),
        event("failed", at=T0 + 3.25, exception="PermissionError(\"password='pw' refused\")",
              traceback="Traceback (most recent call last):\n" + "  frame\n" * 500
              + "PermissionError: password='pw' refused\n"),
    )  # fmt: skip
    [hidden] = orjson.loads(api_for(state, store, expose=False, max_length=200).tasks("")[0])
    assert (hidden["exception_type"], hidden["exception"], hidden["traceback"]) == (
        "PermissionError", "", "",
    )  # fmt: skip
    [row] = orjson.loads(api_for(state, store, expose=True, max_length=200).tasks("")[0])
    assert row["runtime"] == 2.25
    assert row["exception_type"] == "PermissionError"
    assert row["exception"] == f"PermissionError(\"password='{MASK}' refused\")"
    assert row["traceback"].startswith(ELLIPSIS)
    assert row["traceback"].endswith(f"PermissionError: password='{MASK}' refused\n")
    assert len(row["traceback"]) == 201


def test_serving_while_events_pour_in_is_consistent() -> None:
    state, store = fed(max_tasks=500)
    api = api_for(state, store, expose=True)
    stop = threading.Event()
    poured: list[str] = []  # the uuids of the tasks fed so far

    def pour() -> None:
        i = 0
        while not stop.is_set():
            feed(state, *lifecycle(f"u{i}", T0 + i))
            poured.append(f"u{i}")
            i += 1

    thread = threading.Thread(target=pour)
    thread.start()
    reads: list[set[str]] = []
    try:
        # Read until rows were served from both sides of some pouring: a read with succeeded
        # tasks, and a later one that holds tasks fed after it.
        deadline = time.monotonic() + 60
        while not (reads and any(reads[-1] - seen for seen in reads[:-1] if seen)):
            assert time.monotonic() < deadline, f"{len(poured)} tasks fed, {len(reads)} reads"
            assert thread.is_alive(), "the pouring thread died"
            rows = orjson.loads(api.tasks("limit=500")[0])
            assert len(rows) <= 500
            for row in rows:
                assert row["state"] in ("PENDING", "RECEIVED", "STARTED", "SUCCESS")
                if row["state"] == "SUCCESS":
                    assert row["result"] and re.fullmatch(r"u\d+", row["uuid"])
            reads.append({row["uuid"] for row in rows if row["state"] == "SUCCESS"})
    finally:
        stop.set()
        thread.join()
    # The thread's exception, if any, fails this test (pyproject.toml's filterwarnings).
    served = set().union(*reads)
    assert served and served <= set(poured)


def test_search_matches_the_exception_class_not_its_message() -> None:
    state, store = fed()
    feed(
        state,
        event("received", "a", T0, name="tests.login", args="()", kwargs="{}"),
        event("failed", "a", T0 + 1, exception="PermissionError('alice@example.com refused')"),
        event("received", "b", T0 + 2, name="tests.login", args="()", kwargs="{}"),
        event("failed", "b", T0 + 3, exception="KeyError('permission')"),
    )
    api = api_for(state, store, expose=False)

    def found(search: str) -> list[str]:
        return [row["uuid"] for row in orjson.loads(api.tasks(f"search={search}")[0])]

    assert found("permissionerror") == ["a"]
    assert found("KeyError") == ["b"]
    assert found("alice") == []


@pytest.mark.parametrize(
    ("text", "cls"),
    [
        ("ValueError('lifespan must be positive, got -1')", "ValueError"),
        ("celery.exceptions.TimeLimitExceeded(60)", "celery.exceptions.TimeLimitExceeded"),
        ("reject requeue=False: not today", "Reject"),
        ("reject requeue=True: later", "Reject"),
        ("WorkerLostError: Worker exited prematurely", "WorkerLostError"),
        ("<app.errors.Boom object at 0x7f0c>", "app.errors.Boom"),
        ("NotRegistered", "NotRegistered"),
        ("secret-token-123 was refused", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
        ([[["deep"]]], "unknown"),
        ("E" * 10_000 + "()", "E" * MAX_EXCEPTION_CLASS_LENGTH),
    ],
)
def test_the_exception_class_is_the_leading_class_name(text: Any, cls: str) -> None:
    assert exception_class(text) == cls


def test_an_orphaned_task_reads_lost_even_behind_a_worker_clock_ahead() -> None:
    state, store = fed()
    feed(state, *lifecycle()[:3])
    # The exporter's verdict, stamped with its own clock, earlier than the worker's started.
    verdict = {"type": "task-orphaned", "uuid": UUID, "hostname": WORKER, "timestamp": T0 - 60}
    store.take([TaskChange(UUID, "task-orphaned", T0, verdict, None, WORKER)])
    record = store.get(UUID)
    assert record is not None
    assert (record.state, record.orphaned, record.worker) == ("LOST", T0 - 60, WORKER)


def test_a_row_that_cannot_be_encoded_is_skipped_and_counted() -> None:
    state, store = fed()
    feed(state, *lifecycle("a", T0), *lifecycle("b", T0 + 10))
    stats = WebStats()
    redactor = Redactor(compile_secret_keys(DEFAULT_SECRET_KEY_PATTERNS), 1024)
    api = Api(state, store, redactor, expose_payloads=False, clock=lambda: T0, stats=stats)
    with store.reading() as records:
        # Past what orjson writes: what a check the store lacks would let through.
        next(r for r in records if r.uuid == "a").retries = 2**70
    body, headers = api.tasks("")
    assert [row["uuid"] for row in orjson.loads(body)] == ["b"]
    assert headers["X-Matching-Tasks"] == "2"
    state.counts.workers["odd@h"] = WorkerState("odd@h", active=2**70)
    state.counts.workers["fine@h"] = WorkerState("fine@h", active=1)
    assert [row["worker"] for row in orjson.loads(api.workers(""))] == ["fine@h"]
    assert stats.skipped_rows == {"/api/tasks": 1, "/api/workers": 1}


def test_an_answer_is_bounded_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    state, store = fed()
    for i in range(10):
        feed(state, *lifecycle(f"t{i}", T0 + i))
    api = api_for(state, store, expose=True)
    one_row = len(orjson.dumps(orjson.loads(api.tasks("limit=1")[0])[0]))
    monkeypatch.setattr(web_api, "MAX_ANSWER_BYTES", 2 + 3 * (one_row + 1))
    body, headers = api.tasks("")
    assert [row["uuid"] for row in orjson.loads(body)] == ["t9", "t8", "t7"]
    assert headers["X-Tasks-Left-Out"].startswith("7 older matching tasks")


def test_text_fields_are_cut_by_bytes_on_the_way_in() -> None:
    state, store = fed()
    wide = "€" * 10_000  # 3 bytes each
    feed(
        state,
        event("received", "x" * 5000, name=wide, args=wide, kwargs="{}", eta=wide, root_id=wide,
              hostname="h" * 2000, retries=-1),
        event("failed", "x" * 5000, T0 + 1, exception=wide, traceback=wide + "End",
              hostname="h" * 2000),
    )  # fmt: skip
    [record] = store.records()
    assert record.uuid == "x" * bounds.ID_BYTES
    assert record.name == "€" * (bounds.NAME_BYTES // 3)
    assert record.worker == "h" * bounds.NAME_BYTES
    assert record.args == record.exception == "€" * (bounds.PAYLOAD_BYTES // 3)
    assert record.traceback == "€" * ((bounds.PAYLOAD_BYTES - 3) // 3) + "End"
    assert record.eta == "€" * (bounds.SHORT_TEXT_BYTES // 3)
    assert record.root_id == "€" * (bounds.ID_BYTES // 3)
    assert record.retries is None


def test_a_scrape_while_counting_catches_up_does_not_merge_the_window() -> None:
    state, store = fed(max_tasks=100)
    behind = True
    collector = RecentTasksCollector(store, lambda: behind)

    def scraped_size() -> float:
        families = {f.name: f for f in collector.collect()}
        return families["celery_exporter_recent_tasks"].samples[0].value

    for i in range(3):
        feed(state, *lifecycle(f"task-{i}", T0 + i))
    assert scraped_size() == 0  # as of the last merge: none yet
    assert store.pending == 12  # the scrape left the window to the Tasks view's next read
    behind = False
    assert scraped_size() == 3
    assert store.pending == 0
    feed(state, *lifecycle("task-3", T0 + 3))
    behind = True
    assert scraped_size() == 3
