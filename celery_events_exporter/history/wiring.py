"""The task history as the application builds it from the configuration."""

from __future__ import annotations

from dataclasses import dataclass

from celery_events_exporter.history import urls
from celery_events_exporter.history.collector import HistoryCollector
from celery_events_exporter.history.store import HistoryStore, Retention
from celery_events_exporter.history.writer import HistoryWriter
from celery_events_exporter.tasks.redact import Redactor


@dataclass(frozen=True)
class History:
    store: HistoryStore
    writer: HistoryWriter
    collector: HistoryCollector


class HistoryStoreUnopenable(Exception):
    """The history's store cannot be opened at start: its SQLite directory cannot be made."""


def open_store(url: str) -> HistoryStore:
    """The store a resolved ``--tasks.store`` URL names (not ``memory://``)."""
    if url.startswith(urls.SQLITE_PREFIX):
        from celery_events_exporter.history.sqlite import SqliteStore

        return SqliteStore(url.removeprefix(urls.SQLITE_PREFIX))
    from celery_events_exporter.history.postgres import PostgresStore

    store = PostgresStore(url)
    store.open()
    return store


def build(
    url: str,
    data_dir: str,
    redactor: Redactor | None,
    retention: Retention,
    budget_bytes: int,
) -> History | None:
    """The history's store, writer and metrics; ``None`` for ``memory://``. ``redactor`` masks
    the payloads before they are written; without one none are written."""
    resolved = urls.resolve(url, data_dir)
    if resolved == urls.MEMORY:
        return None
    try:
        store = open_store(resolved)
    except OSError as exc:  # a read-only root without a volume, a path through a file...
        raise HistoryStoreUnopenable(f"{urls.redacted(resolved)}: {exc}") from exc
    writer = HistoryWriter(store, redactor, budget_bytes=budget_bytes, retention=retention)
    return History(store, writer, HistoryCollector(writer))
