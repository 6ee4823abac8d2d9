"""``celery-events-exporter history delete``, the erasure subcommand, run as a real process."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from celery_events_exporter.history.postgres import PostgresStore
from celery_events_exporter.history.sql import HistoryQuery
from celery_events_exporter.history.sqlite import SqliteStore
from celery_events_exporter.history.store import HistoryStore
from tests.conftest import require_tool
from tests.test_history_store import T0, rows_of, task_events

pytestmark = pytest.mark.integration


def fill(store: HistoryStore) -> None:
    store.migrate()
    changes = []
    for i in range(30):
        changes += task_events(
            f"t-{i:02d}", T0 + i * 3600, "tests.user" if i < 10 else "tests.add", "task-succeeded"
        )
    store.write(rows_of(changes), None)


def delete(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = require_tool("celery-events-exporter")
    return subprocess.run(
        [command, "history", "delete", *args], capture_output=True, text=True, env=env
    )


def left(store: HistoryStore) -> list[str]:
    return sorted(r.uuid for r in store.page(HistoryQuery(limit=1000)))


def test_erasure_from_the_default_sqlite_file(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "tasks.sqlite3"))
    fill(store)
    done = delete("--data-dir", str(tmp_path), "--uuid", "t-00", "--uuid", "t-01")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 2 task(s) from sqlite:///")
    done = delete("--data-dir", str(tmp_path), "--name", "tests.user")
    assert done.stdout.startswith("deleted 8 task(s)")
    assert left(store) == [f"t-{i:02d}" for i in range(10, 30)]
    refused = delete("--data-dir", str(tmp_path))
    assert refused.returncode == 2 and "give --uuid, --name, --since or --until" in refused.stderr


def test_erasure_of_a_time_range_on_postgresql(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    store.open()
    fill(store)
    since = "2025-12-06T06:46:40Z"  # T0 + 1 h
    until = "2025-12-06T08:46:40+00:00"  # T0 + 3 h: t-01 and t-02
    done = delete("--tasks.store", postgres_url, "--since", since, "--until", until)
    assert done.returncode == 0, done.stderr
    assert "deleted 2 task(s) from postgresql://postgres@127.0.0.1:5432/" in done.stdout
    assert "t-01" not in left(store) and "t-03" in left(store) and len(left(store)) == 28
    store.close()
