"""The history's stores on real databases: a SQLite file and a PostgreSQL database of our own.

Rows are folded from Celery-shaped events (tests/test_history_row.py checks the fold itself);
here: the database's merge of rows written in parts (any split of a task's events gives the
row of all of them), the schema migrated once under concurrency, two writers on one table,
every search term and the plans that serve them, keyset paging, retention and erasure.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_events_exporter.history.postgres import PostgresStore, safe_description
from celery_events_exporter.history.row import Rows, RowValues, TaskRow, task_row
from celery_events_exporter.history.search import parse
from celery_events_exporter.history.sql import (
    POSTGRESQL,
    SCHEMA_TABLE,
    SCHEMA_VERSION,
    SQLITE,
    Cursor,
    Erasure,
    HistoryQuery,
    select_page,
    select_scan_end,
)
from celery_events_exporter.history.sqlite import SqliteStore
from celery_events_exporter.history.store import HistoryStore, Retention
from celery_events_exporter.state.changes import TaskChange
from celery_events_exporter.tasks.redact import Redactor, compile_secret_keys, secret_key_patterns
from celery_events_exporter.web.api import iso
from celery_events_exporter.web.history import HistoryApi
from tests.history_events import task_changes

pytestmark = pytest.mark.integration

T0 = 1_765_000_000.0
REDACTOR = Redactor(compile_secret_keys(secret_key_patterns(())), 1024)


def change(
    uuid: str, kind: str, at: float, host: str = "celery@w1", **fields: object
) -> TaskChange:
    event = {"type": kind, "uuid": uuid, "timestamp": at, "hostname": host, **fields}
    return TaskChange(uuid, kind, at, event, None, None)


def task_events(
    uuid: str, at: float, name: str, outcome: str, host: str = "celery@w1"
) -> list[TaskChange]:
    end: dict[str, object] = {
        "task-succeeded": {"result": "'done'", "runtime": 0.5},
        "task-failed": {"exception": "KeyError('user-42')", "traceback": "Traceback\nKeyError"},
    }.get(outcome, {})  # type: ignore[assignment]
    return [
        change(uuid, "task-sent", at, "client@app", name=name, queue="celery"),
        change(uuid, "task-received", at + 0.1, host, name=name, args="(7, 'blue')",
               kwargs="{'colour': 'blue', 'size': 3, 'password': 'hunter2'}", retries=0),
        change(uuid, "task-started", at + 0.2, host),
        change(uuid, outcome, at + 0.7, host, **end),
    ]  # fmt: skip


def rows_of(changes: list[TaskChange], pending_before: float | None = None) -> list[RowValues]:
    """The rows the writer folds of ``changes`` (payloads shown, masked), finished."""
    rows = Rows(REDACTOR)
    rows.fold((c.uuid, c.type, c.timestamp, c.event, c.name, c.worker) for c in changes)
    return rows.finished(pending_before)


def expected_rows(changes: list[TaskChange]) -> dict[str, TaskRow]:
    return {values[0]: task_row(values) for values in rows_of(changes)}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    if request.param == "sqlite":
        made: HistoryStore = SqliteStore(str(tmp_path / "history.sqlite3"))
        made.migrate()
        yield made
        made.close()
        return
    url: str = request.getfixturevalue("postgres_url")
    pg = PostgresStore(url)
    pg.open()
    pg.migrate()
    yield pg
    pg.close()


def twin(store: HistoryStore) -> HistoryStore:
    """A second store on the same database, as a second exporter would open it."""
    if isinstance(store, SqliteStore):
        return SqliteStore(str(store.path))
    assert isinstance(store, PostgresStore)
    other = PostgresStore(str(store.pool.conninfo))
    other.open()
    return other


def test_the_schema_is_migrated_once_by_exporters_starting_together(store: HistoryStore) -> None:
    others = [twin(store) for _ in range(4)]
    errors: list[Exception] = []

    def migrate(s: HistoryStore) -> None:
        try:
            s.migrate()
        except Exception as exc:  # collected: the assertion shows them
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    store.write(rows_of(task_events("a", T0, "tests.add", "task-succeeded")), None)
    assert [r.uuid for r in store.page(HistoryQuery())] == ["a"]
    for other in others:
        other.close()


def test_two_writers_of_one_task_leave_one_row_with_every_event(store: HistoryStore) -> None:
    """Two exporters each saw every event, in other batches: one row, the merged one."""
    uuids = [f"task-{i:03d}" for i in range(200)]
    changes = [
        c
        for i, u in enumerate(uuids)
        for c in task_events(u, T0 + i, "tests.add", "task-succeeded")
    ]
    other = twin(store)
    expected = expected_rows(changes)

    def write(s: HistoryStore, part: list[TaskChange]) -> None:
        for start in range(0, len(part), 97):
            s.write(rows_of(part[start : start + 97]), None)

    # Each writer gets every event, in another order and other batches.
    first = threading.Thread(target=write, args=(store, changes))
    second = threading.Thread(target=write, args=(other, changes[::-1]))
    for thread in (first, second):
        thread.start()
    for thread in (first, second):
        thread.join()
    stored = store.page(HistoryQuery(limit=1000))
    assert len(stored) == 200
    assert {row.uuid: row for row in stored} == expected
    other.close()


# Hosts and texts past ASCII and case, and parents: the SQL merge must order and compare them as
# the writer's fold does.
events = task_changes(
    "p",
    T0,
    hosts=["celery@w1", "celery@W2", "client@\u00e9t\u00e9", ""],
    texts=["a", "B", "\u00e9", "password=x"],
    parents=[None, "p", "q1", "Q2"],
)


def test_rows_written_in_parts_merge_into_the_row_of_all_their_events(
    store: HistoryStore,
) -> None:
    """A task's events split across writes (flush windows, or two exporters), in any order,
    repeated: the database's merge gives the row the writer folds of all of them at once."""

    @settings(
        max_examples=300 if isinstance(store, SqliteStore) else 150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        st.lists(events, min_size=1, max_size=10),
        st.sampled_from([None, T0 + 1.0]),
        st.randoms(use_true_random=False),
    )
    def check(changes: list[TaskChange], pending_before: float | None, rng: random.Random) -> None:
        store.erase(Erasure(uuids=("p",)))
        shuffled = changes + rng.sample(changes, k=rng.randint(0, len(changes)))
        rng.shuffle(shuffled)
        cuts = sorted(rng.randint(0, len(shuffled)) for _ in range(2))
        for part in (shuffled[: cuts[0]], shuffled[cuts[0] : cuts[1]], shuffled[cuts[1] :]):
            if part:
                store.write(rows_of(part, pending_before), pending_before)
        (whole,) = rows_of(changes, pending_before)
        assert store.get("p") == task_row(whole)

    check()


def test_every_search_term(store: HistoryStore) -> None:
    changes = (
        task_events("aaaa-1", T0, "tests.add", "task-succeeded")
        + task_events("aaab-2", T0 + 1, "tests.fail", "task-failed", host="celery@w2")
        + task_events("bbbb-3", T0 + 2, "tests.add", "task-failed", host="celery@w2")
        + task_events("cccc-4", T0 + 3, "my task", "task-revoked")
    )
    store.write(rows_of(changes), None)

    def found(search: str, **query: object) -> list[str]:
        asked = HistoryQuery(terms=tuple(parse(search)), **query)  # type: ignore[arg-type]
        uuids = [r.uuid for r in store.page(asked)]
        # A scan budget over more rows than the table holds changes no answer.
        assert [r.uuid for r in store.page(replace(asked, scan_rows=10))] == uuids
        return uuids

    assert found("") == ["cccc-4", "bbbb-3", "aaab-2", "aaaa-1"]
    assert found("state:FAILURE") == ["bbbb-3", "aaab-2"]
    assert found("state:failure,revoked") == ["cccc-4", "bbbb-3", "aaab-2"]
    assert found("name:tests.add") == ["bbbb-3", "aaaa-1"]
    assert found("name:tests.*") == ["bbbb-3", "aaab-2", "aaaa-1"]
    assert found('name:"my task"') == ["cccc-4"]
    assert found("uuid:aaa") == ["aaab-2", "aaaa-1"]
    assert found("worker:celery@w2") == ["bbbb-3", "aaab-2"]
    assert found("exception:KeyError") == ["bbbb-3", "aaab-2"]
    assert found("result:done") == ["aaaa-1"]
    assert found("args:blue") == ["cccc-4", "bbbb-3", "aaab-2", "aaaa-1"]
    assert found("kwargs:size=3") == ["cccc-4", "bbbb-3", "aaab-2", "aaaa-1"]
    assert found("kwargs:colour=blue") == ["cccc-4", "bbbb-3", "aaab-2", "aaaa-1"]
    assert found("kwargs:colour=red") == []
    # The password was masked before it was stored: nothing to find.
    assert found("hunter2") == []
    assert found("kwargs:password=hunter2") == []
    assert found("fail") == ["bbbb-3", "aaab-2"]  # free text: the name, the state...
    assert found("aaa") == ["aaab-2", "aaaa-1"]  # ...and the uuid's start
    assert found("AAAA-1") == ["aaaa-1"]
    assert found("aaa-1") == []  # not the middle of a uuid
    assert found("-state:FAILURE") == ["cccc-4", "aaaa-1"]
    assert found("tests -name:tests.fail state:FAILURE") == ["bbbb-3"]  # AND-ed, unlike Flower
    assert found("", states=frozenset({"REVOKED"})) == ["cccc-4"]
    assert found("", name="FAIL", worker="w2") == ["aaab-2"]
    assert found("", since=T0 + 1, until=T0 + 2) == ["bbbb-3", "aaab-2"]
    # Keyset paging: each page starts where the last ended.
    first = store.page(HistoryQuery(limit=3))
    last = first[-1]
    assert last.seen_at is not None
    rest = store.page(HistoryQuery(limit=3, after=Cursor(last.seen_at, last.uuid)))
    assert [r.uuid for r in first + rest] == ["cccc-4", "bbbb-3", "aaab-2", "aaaa-1"]


@pytest.mark.parametrize(
    ("search", "index"),
    [
        (
            "uuid:aaaa",
            {"sqlite": "sqlite_autoindex_celery_tasks_1", "postgresql": "celery_tasks_pkey"},
        ),
        ("name:tests.add", {"sqlite": "celery_tasks_name", "postgresql": "celery_tasks_name"}),
        ("state:FAILURE", {"sqlite": "celery_tasks_state", "postgresql": "celery_tasks_state"}),
        (
            "worker:celery@w1",
            {"sqlite": "celery_tasks_worker", "postgresql": "celery_tasks_worker"},
        ),
        ("", {"sqlite": "celery_tasks_seen", "postgresql": "celery_tasks_seen"}),
    ],
)
def test_searches_are_served_by_indexes(
    store: HistoryStore, search: str, index: dict[str, str]
) -> None:
    dialect = SQLITE if isinstance(store, SqliteStore) else POSTGRESQL
    if isinstance(store, PostgresStore):
        with store.pool.connection() as conn:  # no sequential scan even on a small table
            conn.execute("SET enable_seqscan = off")
            sql, params = select_page(
                dialect, HistoryQuery(terms=tuple(parse(search)), since=T0 - 3600)
            )
            plan = "\n".join(str(r[0]) for r in conn.execute("EXPLAIN " + sql, params).fetchall())
    else:
        sql, params = select_page(
            dialect, HistoryQuery(terms=tuple(parse(search)), since=T0 - 3600)
        )
        plan = store.explain(sql, params)
    assert index[dialect.name] in plan, plan
    assert "SCAN celery_tasks\n" not in plan + "\n" and "Seq Scan" not in plan, plan


def needles(tmp_path: Path) -> SqliteStore:
    """50 tasks t-00 (oldest) to t-49, one a second; every 7th from t-03 is tests.needle."""
    store = SqliteStore(str(tmp_path / "history.sqlite3"))
    store.migrate()
    changes = []
    for i in range(50):
        name = "tests.needle" if i % 7 == 3 else "tests.add"
        changes += task_events(f"t-{i:02d}", T0 + i, name, "task-succeeded")
    store.write(rows_of(changes), None)
    return store


def pages(api: HistoryApi, query: str) -> list[tuple[list[str], str | None, str | None]]:
    """Every page of ``query``, following X-Next-Page: (uuids, X-Tasks-Scanned, X-Next-Page)."""
    out: list[tuple[list[str], str | None, str | None]] = []
    after = ""
    while True:
        body, headers = api.tasks(query + after)
        cursor = headers.get("X-Next-Page")
        uuids = [task["uuid"] for task in orjson.loads(body)]
        out.append((uuids, headers.get("X-Tasks-Scanned"), cursor))
        if cursor is None:
            return out
        after = f"&after={cursor}"


def test_a_search_no_index_serves_reads_its_scan_budget_then_continues(tmp_path: Path) -> None:
    store = needles(tmp_path)
    api = HistoryApi(store, expose_payloads=False, search_scan_rows=10)
    found = pages(api, "search=needle&limit=3")
    # Each page reads 10 rows newest first; a short page continues after the last row read
    # (t-40, not the last match t-45), so every match comes once, in order.
    assert [(uuids, scanned) for uuids, scanned, _ in found] == [
        (["t-45"], "10"),  # read t-49..t-40
        (["t-38", "t-31"], "10"),  # t-39..t-30
        (["t-24"], "10"),
        (["t-17", "t-10"], "10"),
        (["t-03"], "10"),  # t-09..t-00: the budget ran out on the last row
        ([], None),  # nothing left to read: no cursor
    ]
    assert [cursor.split("_")[1] if cursor else None for _, _, cursor in found] == [
        "t-40", "t-30", "t-20", "t-10", "t-00", None,
    ]  # fmt: skip
    # A page that fills continues after its last row, as without a budget.
    assert pages(api, "search=needle&limit=1")[0] == (["t-45"], None, f"{T0 + 45!r}_t-45")
    # Indexed conditions (time, name) bound the scan; containment (name=) is checked row by row.
    since = iso(T0 + 5)
    found = pages(api, f"search=needle&from={since}&limit=3")
    assert [(uuids, scanned) for uuids, scanned, _ in found] == [
        (["t-45"], "10"),
        (["t-38", "t-31"], "10"),
        (["t-24"], "10"),
        (["t-17", "t-10"], "10"),
        ([], None),  # t-09..t-05: five rows, within the budget
    ]
    found = pages(api, "name=NEEDLE&search=name:tests.*&limit=10")
    assert [(uuids, scanned) for uuids, scanned, _ in found] == [
        (["t-45"], "10"),
        (["t-38", "t-31"], "10"),
        (["t-24"], "10"),
        (["t-17", "t-10"], "10"),
        (["t-03"], "10"),
        ([], None),
    ]
    # Without a budget the same search reads until the page is full.
    unbounded = HistoryApi(store, expose_payloads=False)
    assert pages(unbounded, "search=needle&limit=10") == [
        (["t-45", "t-38", "t-31", "t-24", "t-17", "t-10", "t-03"], None, None)
    ]
    store.close()


@pytest.mark.parametrize(
    ("search", "index"),
    [("needle", "celery_tasks_seen"), ("needle name:tests.add", "celery_tasks_name")],
)
def test_a_budgeted_scan_walks_an_index_in_page_order(
    tmp_path: Path, search: str, index: str
) -> None:
    store = needles(tmp_path)
    query = HistoryQuery(
        terms=tuple(parse(search)), since=T0, after=Cursor(T0 + 40, "t-40"), scan_rows=10
    )
    scan_end = select_scan_end(SQLITE, query)
    assert scan_end is not None
    # The budget's last row: an index-only walk of 10 entries, newest first.
    [end_plan] = store.explain(*scan_end).splitlines()
    assert f"USING COVERING INDEX {index}" in end_plan, end_plan
    # The page walks the same index from the cursor down to that row, in page order (no sort).
    [page_plan] = store.explain(*select_page(SQLITE, query, Cursor(T0 + 30, "t-30"))).splitlines()
    assert page_plan.startswith("SEARCH celery_tasks USING INDEX " + index), page_plan
    store.close()


def test_retention_deletes_in_batches_and_keeps_failures_longer(store: HistoryStore) -> None:
    changes = []
    for i in range(7500):
        outcome = "task-failed" if i % 5 == 0 else "task-succeeded"
        changes += task_events(f"old-{i:05d}", T0 + i * 0.001, "tests.add", outcome)
    changes += task_events("fresh", T0 + 10 * 86400, "tests.add", "task-succeeded")
    changes.append(change("pending", "task-sent", T0 + 10 * 86400 - 7200, "client@app", name="t"))
    store.write(rows_of(changes), None)
    now = T0 + 10 * 86400 + 60
    retention = Retention(default=7 * 86400, failed=30 * 86400, pending=3600)
    deleted = store.expire(now, retention)
    # Every success, in one round of batches of 1000 (more than a round of old); failures are
    # kept 30 days.
    assert deleted == 6000
    left = store.page(HistoryQuery(limit=10_000))
    assert len(left) == 1502
    assert {r.state for r in left} == {"FAILURE", "SUCCESS", "UNKNOWN"}
    assert store.get("pending").state == "UNKNOWN"  # type: ignore[union-attr]
    assert store.expire(now + 30 * 86400, retention) == 1502


def test_erasure_by_uuid_name_and_time(store: HistoryStore) -> None:
    changes = []
    for i in range(1500):
        changes += task_events(
            f"t-{i:05d}", T0 + i, "tests.user" if i % 2 else "tests.add", "task-succeeded"
        )
    store.write(rows_of(changes), None)
    assert store.erase(Erasure(uuids=("t-00000", "t-00002", "missing"))) == 2
    assert store.erase(Erasure(name="tests.user")) == 750
    assert store.erase(Erasure(since=T0 + 1000, until=T0 + 1100)) == 50
    left = {r.uuid for r in store.page(HistoryQuery(limit=10_000))}
    assert len(left) == 1500 - 2 - 750 - 50
    assert "t-01050" not in left and "t-01100" in left
    with pytest.raises(ValueError, match="needs a uuid"):
        store.erase(Erasure())


@pytest.mark.unit
def test_the_log_never_shows_the_password() -> None:
    shown = safe_description("postgresql://history:s3cret@db.example:5432/tasks?sslmode=require")
    assert shown == "postgresql://history@db.example:5432/tasks"


def test_crafted_text_never_gets_a_batch_refused(store: HistoryStore) -> None:
    """PostgreSQL refuses NUL in text and JSON: a crafted event must not cost its batch."""
    crafted = [
        change("nul", "task-received", T0, "celery@w\x001", name="evil\x00name", args="('\x00',)"),
        change(
            "nul",
            "task-failed",
            T0 + 1,
            "celery@w\x001",
            exception="ValueError('\x00')",
            traceback="\x00",
        ),
    ]
    store.write(rows_of(crafted + task_events("fine", T0, "tests.add", "task-succeeded")), None)
    row = store.get("nul")
    assert row is not None
    assert (row.name, row.worker, row.args, row.state) == (
        "evil\ufffdname", "celery@w\ufffd1", "('\ufffd',)", "FAILURE",
    )  # fmt: skip
    assert store.get("fine") is not None


def test_free_text_is_served_by_a_trigram_index_on_postgresql(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    store.open()
    store.migrate()
    store.write(rows_of(task_events("aaaa-1", T0, "tests.add", "task-failed")), None)
    query = HistoryQuery(terms=tuple(parse("keyerror")), limit=100)
    with store.pool.connection() as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_indexscan = off")  # not the seen_at index's scan in order
        sql, params = select_page(POSTGRESQL, query)
        plan = "\n".join(str(r[0]) for r in conn.execute("EXPLAIN " + sql, params).fetchall())
    assert "celery_tasks_text" in plan and "celery_tasks_pkey" in plan, plan  # the uuid's start
    # Matched in any case, never across two columns.
    assert [r.uuid for r in store.page(query)] == ["aaaa-1"]
    assert store.page(HistoryQuery(terms=tuple(parse("tests.add aaaa")))) != []
    assert store.page(HistoryQuery(terms=tuple(parse('"add aaaa"')))) == []
    store.close()


V1_FREE_TEXT_INDEX = (
    "CREATE INDEX celery_tasks_text ON celery_tasks USING gin ((lower(coalesce(name, '') "
    "|| chr(31) || coalesce(uuid, '') || chr(31) || coalesce(state, '') || chr(31) || "
    "coalesce(worker, '') || chr(31) || coalesce(exception_type, '') || chr(31) || "
    "coalesce(args, '') || chr(31) || coalesce(kwargs, '') || chr(31) || coalesce(result, '')))"
    " gin_trgm_ops)"
)
"""Schema version 1's trigram index, as that release created it."""


def test_a_version_1_postgresql_history_is_migrated_at_start(postgres_url: str) -> None:
    """Version 2's trigram index leaves the uuid out: the old index is replaced, the rows stay,
    and free text still finds a task by its uuid's start (the primary key)."""
    old = PostgresStore(postgres_url)
    old.open()
    with old.pool.connection() as conn, conn.transaction():
        conn.execute(f"CREATE TABLE {SCHEMA_TABLE} (version INTEGER NOT NULL)")
        for statement in POSTGRESQL.schema():
            conn.execute(statement)
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        conn.execute(V1_FREE_TEXT_INDEX)
        conn.execute(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES (1)")
    old.write(rows_of(task_events("1f2e-old", T0, "tests.add", "task-failed")), None)
    old.close()

    stores = [PostgresStore(postgres_url) for _ in range(3)]
    for store in stores:
        store.open()
    threads = [threading.Thread(target=store.migrate) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store = stores[0]
    with store.pool.connection() as conn:
        versions = conn.execute(f"SELECT version FROM {SCHEMA_TABLE} ORDER BY 1").fetchall()
        index = conn.execute("SELECT pg_get_indexdef('celery_tasks_text'::regclass)").fetchone()
    assert versions == [(1,), (SCHEMA_VERSION,)]  # migrated once, under the lock
    assert SCHEMA_VERSION == 2
    assert index is not None and "uuid" not in index[0] and "gin_trgm_ops" in index[0], index
    store.write(rows_of(task_events("9a8b-new", T0 + 1, "tests.add", "task-failed")), None)
    for search, uuids in [
        ("keyerror", ["9a8b-new", "1f2e-old"]),
        ("1f2e", ["1f2e-old"]),
        ("9A8B-NEW", ["9a8b-new"]),
    ]:
        assert [r.uuid for r in store.page(HistoryQuery(terms=tuple(parse(search))))] == uuids
    for each in stores:
        each.close()


def test_a_version_1_sqlite_history_is_migrated_at_start(tmp_path: Path) -> None:
    """SQLite's schema is the same in version 2: the version is recorded, the rows stay."""
    old = SqliteStore(str(tmp_path / "history.sqlite3"))
    with old._writing() as conn:
        conn.execute(f"CREATE TABLE {SCHEMA_TABLE} (version INTEGER NOT NULL)")
        for statement in SQLITE.schema():
            conn.execute(statement)
        conn.execute(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES (1)")
    old.write(rows_of(task_events("1f2e-old", T0, "tests.add", "task-failed")), None)
    old.close()
    store = SqliteStore(str(tmp_path / "history.sqlite3"))
    store.migrate()
    store.migrate()
    with store._writing() as conn:
        versions = conn.execute(f"SELECT version FROM {SCHEMA_TABLE} ORDER BY 1").fetchall()
    assert versions == [(1,), (2,)]
    assert [r.uuid for r in store.page(HistoryQuery(terms=tuple(parse("1f2e"))))] == ["1f2e-old"]
    store.close()
