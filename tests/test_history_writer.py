"""The history's writer against real databases: merges per task, drops only what is refused,
and holds everything while the database is away (the outage end to end is in
tests/test_history_exporter.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from celery_events_exporter import app
from celery_events_exporter.config import Config
from celery_events_exporter.history import writer as writer_module
from celery_events_exporter.history.collector import HistoryCollector
from celery_events_exporter.history.postgres import PostgresStore
from celery_events_exporter.history.row import ENTRY_BYTES, ROW_BYTES, RowValues
from celery_events_exporter.history.sql import HistoryQuery
from celery_events_exporter.history.sqlite import SqliteStore
from celery_events_exporter.history.store import HistoryStore, Retention
from celery_events_exporter.history.wiring import History
from celery_events_exporter.history.writer import (
    BATCH_OVERHEAD,
    CHANGE_OVERHEAD,
    MAX_YIELD,
    HistoryWriter,
    buffered_bytes,
    ingest_pause,
)
from celery_events_exporter.intake.backlog import MESSAGE_OVERHEAD, IntakeBacklog
from celery_events_exporter.intake.message import RawMessage
from tests.conftest import wait_until
from tests.test_history_store import T0, task_events

pytestmark = pytest.mark.integration

NO_RETENTION = Retention(default=0, failed=0, pending=0)


@pytest.fixture(params=["sqlite", "postgresql"])
def refusing_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    """A store whose database refuses the row of task 'bad' (a trigger), as a database refuses
    what breaks one of its rules."""
    if request.param == "sqlite":
        store: HistoryStore = SqliteStore(str(tmp_path / "tasks.sqlite3"))
        store.migrate()
        with store._writing() as conn:  # type: ignore[attr-defined]
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON celery_tasks WHEN NEW.uuid = 'bad' "
                "BEGIN SELECT RAISE(ABORT, 'refused by a rule'); END"
            )
        yield store
        store.close()
        return
    url: str = request.getfixturevalue("postgres_url")
    pg = PostgresStore(url)
    pg.open()
    pg.migrate()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.uuid = 'bad' THEN RAISE EXCEPTION 'refused by a rule'; END IF; "
            "RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON celery_tasks FOR EACH ROW "
            "EXECUTE FUNCTION refuse()"
        )
    yield pg
    pg.close()


@pytest.mark.parametrize("batch_rows", [5000, 4])
def test_a_refused_row_costs_only_itself(
    refusing_store: HistoryStore, batch_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also when the batches are merged two at a time (PostgreSQL): the refused one is split
    while the others are written."""
    monkeypatch.setattr(writer_module, "BATCH_ROWS", batch_rows)
    writer = HistoryWriter(refusing_store, None, budget_bytes=1 << 24, retention=NO_RETENTION)
    uuids = [f"ok-{i:02d}" for i in range(20)]
    changes = [
        c
        for u in [*uuids[:7], "bad", *uuids[7:]]
        for c in task_events(u, T0, "t", "task-succeeded")
    ]
    writer.sink(changes)
    assert writer.flush() is True
    stored = sorted(r.uuid for r in refusing_store.page(HistoryQuery(limit=100)))
    assert stored == uuids
    assert writer.stats.rows_written == 20
    assert writer.stats.dropped == {"buffer_full": 0, "rejected": 1}
    assert writer.buffer_bytes == 0
    writer.final_flush()


def test_one_row_per_task_however_its_events_are_split_across_flushes(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "tasks.sqlite3"))
    store.migrate()
    writer = HistoryWriter(store, None, budget_bytes=1 << 24, retention=NO_RETENTION)
    events = task_events("split", T0, "tests.add", "task-succeeded")
    for event in reversed(events):  # each flush window sees one event, the last first
        writer.sink([event])
        assert writer.flush() is True
    (row,) = store.page(HistoryQuery())
    assert (row.state, row.name, row.worker, row.client, len(row.events)) == (
        "SUCCESS", "tests.add", "celery@w1", "client@app", 4,
    )  # fmt: skip
    assert writer.stats.rows_written == 4  # one row write per flush window


def test_past_its_budget_the_buffer_drops_and_counts(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "tasks.sqlite3"))
    events = task_events("a", T0, "tests.add", "task-succeeded")
    budget = buffered_bytes(events[:2]) + buffered_bytes(events[2:])
    writer = HistoryWriter(store, None, budget_bytes=budget, retention=NO_RETENTION)
    writer.sink(events[:2])
    writer.sink(events[2:])  # the budget, exactly
    writer.sink(task_events("b", T0, "tests.add", "task-succeeded")[:1])
    assert writer.stats.dropped["buffer_full"] == 1
    assert writer.buffer_bytes == budget


def test_the_buffer_holds_the_states_batches_by_their_json(tmp_path: Path) -> None:
    """The state's batch is kept as it is, accounted by the JSON its changes came in; once
    folded, its tasks' rows hold the buffer until they are written."""
    store = SqliteStore(str(tmp_path / "tasks.sqlite3"))
    store.migrate()
    writer = HistoryWriter(store, None, budget_bytes=1 << 24, retention=NO_RETENTION)
    state = app.build_state(Config(), None, History(store, writer, HistoryCollector(writer)))
    events = [dict(c.event) for c in task_events("a", T0, "tests.add", "task-succeeded")]
    body = json.dumps(events)
    state.apply_batch([(json.loads(body), T0, body)])
    assert writer.buffer_bytes == len(body) + BATCH_OVERHEAD + 4 * CHANGE_OVERHEAD
    writer._take()
    assert writer.buffer_bytes == ROW_BYTES + 4 * ENTRY_BYTES
    assert writer.flush() is True
    assert writer.buffer_bytes == 0
    assert store.get("a") is not None


def test_the_states_task_changes_are_written_by_the_workers_clock_and_orphans_read_lost(
    tmp_path: Path,
) -> None:
    """Wired as the app wires it: the state's batches (decoded again from the messages' JSON
    when read) and the sweep's task-orphaned changes go to the writer."""
    store = SqliteStore(str(tmp_path / "tasks.sqlite3"))
    store.migrate()
    writer = HistoryWriter(store, None, budget_bytes=1 << 24, retention=NO_RETENTION)
    state = app.build_state(Config(), None, History(store, writer, HistoryCollector(writer)))
    host = "celery@w1"
    received_at = T0 + 100.0  # the exporter's clock, far from the worker's

    def message(*events: dict[str, Any]) -> None:
        body = json.dumps(events)
        state.apply_batch([(json.loads(body), received_at, body)])

    message({"type": "worker-heartbeat", "hostname": host, "freq": 2.0, "timestamp": T0})
    message(
        *(
            {"type": t, "uuid": uuid, "hostname": host, "timestamp": T0 + offset, **fields}
            for uuid, t, offset, fields in (
                ("lost", "task-received", 1.0, {"name": "tests.slow"}),
                ("lost", "task-started", 2.0, {}),
                ("done", "task-received", 3.0, {"name": "tests.add"}),
                ("done", "task-started", 4.0, {}),
                ("done", "task-succeeded", 5.0, {"runtime": 1.0}),
            )
        )
    )
    state.sweep(received_at, {host})  # online at this sweep
    state.sweep(received_at + 60.0, set())  # gone at the next one, without a goodbye
    assert writer.flush() is True

    lost, done = store.get("lost"), store.get("done")
    assert lost is not None and done is not None
    assert (lost.state, lost.name, lost.worker) == ("LOST", "tests.slow", host)
    assert (lost.received, lost.started, lost.orphaned) == (T0 + 1.0, T0 + 2.0, T0 + 160.0)
    assert (done.state, done.name, done.received, done.succeeded) == (
        "SUCCESS", "tests.add", T0 + 3.0, T0 + 5.0,
    )  # fmt: skip
    assert writer.stats.dropped == {"buffer_full": 0, "rejected": 0}


@pytest.mark.unit
def test_while_ingest_is_behind_the_writer_takes_a_fifth_of_the_time() -> None:
    assert ingest_pause(0.010) == pytest.approx(0.040)  # 10 ms of work, then 40 ms left
    assert ingest_pause(0.0) == 0.0
    assert ingest_pause(60.0) == MAX_YIELD  # never stops for long


def test_a_writer_yielding_to_ingest_still_writes(tmp_path: Path) -> None:
    """Ingest behind all the time (a burst that does not end): the writer pauses after each
    unit of work but goes on, every row written."""
    store = SqliteStore(str(tmp_path / "tasks.sqlite3"))
    writer = HistoryWriter(
        store, None, budget_bytes=1 << 24, retention=NO_RETENTION, flush_interval=0.05
    )
    asked: list[bool] = []

    def behind() -> bool:
        asked.append(True)
        return True

    uuids = [f"t-{i:03d}" for i in range(300)]
    for uuid in uuids:
        writer.sink(task_events(uuid, T0, "tests.add", "task-succeeded"))
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), kwargs={"ingest_behind": behind})
    thread.start()
    try:
        wait_until(lambda: writer.stats.rows_written == 300, what="every row written")
    finally:
        stop.set()
        thread.join(10)
    assert len(store.page(HistoryQuery(limit=1000))) == 300
    assert len(asked) >= 300 + 1  # after each batch folded, after the rows written
    assert writer.buffer_bytes == 0


def _message(size: int) -> RawMessage:
    """A message that costs the intake backlog ``size`` bytes."""
    return RawMessage(T0, "application/json", b"x" * (size - MESSAGE_OVERHEAD))


def test_the_history_takes_only_what_the_intake_backlog_leaves_of_their_budget(
    tmp_path: Path,
) -> None:
    """One budget for both: the sink drops (and counts) a batch that fits the history's own
    budget but not what the backlog leaves of the shared one."""
    batch = task_events("a", T0, "tests.add", "task-succeeded")
    size = buffered_bytes(batch)
    inbox = IntakeBacklog(3 * size)
    writer = HistoryWriter(
        SqliteStore(str(tmp_path / "tasks.sqlite3")), None, budget_bytes=1 << 24,
        retention=NO_RETENTION,
    )  # fmt: skip
    inbox.spill, writer.room = writer, inbox.room
    inbox.put(_message(size + 1))
    writer.sink(batch)  # 2 * size + 1 of 3 * size
    writer.sink(task_events("b", T0, "tests.add", "task-succeeded"))  # one byte over
    assert writer.stats.dropped["buffer_full"] == 4
    assert writer.buffer_bytes == size
    assert inbox.room() == 2 * size - 1  # the history holds one batch of it


def test_the_backlog_sheds_the_historys_newest_batches_and_drops_nothing(tmp_path: Path) -> None:
    """Counting first: a message that fits the backlog's budget only without the history's
    buffer is taken, and the history's newest unfolded batches make the room, counted."""
    store = SqliteStore(str(tmp_path / "tasks.sqlite3"))
    store.migrate()
    batches = [task_events(uuid, T0, "tests.add", "task-succeeded") for uuid in "abc"]
    size = buffered_bytes(batches[0])
    inbox = IntakeBacklog(4 * size)
    writer = HistoryWriter(store, None, budget_bytes=1 << 24, retention=NO_RETENTION)
    inbox.spill, writer.room = writer, inbox.room
    for batch in batches:
        writer.sink(batch)
    inbox.put(_message(size + 1))  # one byte past the budget with the three batches
    assert (inbox.dropped, inbox.bytes) == (0, size + 1)
    assert writer.stats.dropped["buffer_full"] == 4  # "c", the newest
    assert writer.buffer_bytes == writer.sheddable_bytes == 2 * size
    inbox.put(_message(3 * size))  # the backlog's own budget still drops what passes it
    assert (inbox.dropped, inbox.bytes) == (1, size + 1)
    assert writer.buffer_bytes == 2 * size  # nothing shed for a message dropped anyway
    assert writer.flush() is True
    assert sorted(r.uuid for r in store.page(HistoryQuery(limit=10))) == ["a", "b"]


def test_the_app_shares_the_intake_budget_with_the_history(tmp_path: Path) -> None:
    config = Config(data_dir=str(tmp_path), max_intake_backlog_bytes=1 << 20)
    exporter = app.wire(config)
    try:
        decoder = next(t for name, t in exporter.threads if name == "ingest").__self__  # type: ignore[attr-defined]
        writer = decoder.state._sinks[0].__self__
        assert decoder.inbox.spill is writer
        assert writer.room() == 1 << 20
    finally:
        exporter.server.server_close()


class _Watched(SqliteStore):
    """A real SQLite store that notes, at each write, how many rows its writer held folded."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.writer: HistoryWriter | None = None
        self.pending_at_writes: list[int] = []

    def write(self, rows: Sequence[RowValues], pending_before: float | None) -> None:
        assert self.writer is not None
        self.pending_at_writes.append(len(self.writer._rows.by_uuid))
        super().write(rows, pending_before)


def test_a_flush_folds_a_transactions_worth_of_rows_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a burst the buffer is folded and written piece by piece: the rows pending never
    hold more than one transaction's tasks (folded whole, they held every task at once)."""
    monkeypatch.setattr(writer_module, "BATCH_ROWS", 2)
    store = _Watched(str(tmp_path / "tasks.sqlite3"))
    store.migrate()
    writer = HistoryWriter(store, None, budget_bytes=1 << 24, retention=NO_RETENTION)
    store.writer = writer
    for uuid in "abcde":
        writer.sink(task_events(uuid, T0, "tests.add", "task-succeeded"))
    assert writer.flush() is True
    assert store.pending_at_writes == [2, 2, 1]
    assert writer.stats.rows_written == 5
    assert writer.buffer_bytes == 0
    assert sorted(r.uuid for r in store.page(HistoryQuery(limit=10))) == list("abcde")
