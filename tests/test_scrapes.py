"""Scrapes first (celery_events_exporter.scrapes): while ``/metrics`` is made, counting ends its
batch at the next message and waits, the task history's writer waits between its units of work;
neither waits for long (the ingest thread once per scrape), and a scrape shows everything
counted before it began."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from celery_events_exporter.config import DEFAULT_QUEUE_WAIT_BUCKETS, DEFAULT_RUNTIME_BUCKETS
from celery_events_exporter.exposition.page import MetricsPage
from celery_events_exporter.exposition.writer import Format
from celery_events_exporter.history.sql import HistoryQuery
from celery_events_exporter.history.sqlite import SqliteStore
from celery_events_exporter.history.store import Retention
from celery_events_exporter.history.writer import HistoryWriter
from celery_events_exporter.parsers import ListenAddress
from celery_events_exporter.scrapes import MAX_GIVE_WAY, MAX_INGEST_GIVE_WAY, Scrapes
from celery_events_exporter.state import DecodedMessage, State, StateSettings, TaskChange
from celery_events_exporter.web import server as http
from tests.conftest import wait_until
from tests.test_history_store import T0, task_events

pytestmark = pytest.mark.unit


def sent(uuid: str, at: float) -> DecodedMessage:
    events = [{"type": "task-sent", "uuid": uuid, "hostname": "client", "name": "t.add"}]
    return events, at, orjson.dumps(events)


def make_state(scrapes: Scrapes) -> State:
    settings = StateSettings(DEFAULT_RUNTIME_BUCKETS, DEFAULT_QUEUE_WAIT_BUCKETS)
    return State(settings, scrapes=scrapes)


def test_scrapes_in_progress_are_counted_and_waited_for() -> None:
    scrapes = Scrapes()
    assert scrapes.active is False
    with scrapes.scraping():
        with scrapes.scraping():
            assert scrapes.active is True
        assert scrapes.active is True  # one of the two still renders
        began = time.monotonic()
        scrapes.give_way(0.2)  # none ends: the wait has its bound
        assert time.monotonic() - began >= 0.2
    assert scrapes.active is False
    began = time.monotonic()
    scrapes.give_way()
    assert time.monotonic() - began < 0.1  # no scrape: no wait


def test_a_batch_ends_at_the_next_message_while_a_scrape_renders() -> None:
    scrapes = Scrapes()
    state = make_state(scrapes)
    batches: list[Sequence[TaskChange]] = []
    state.subscribe(batches.append)
    messages = [sent(f"t-{i}", 10.0 + i) for i in range(3)]
    ingest = threading.Thread(target=state.apply_batch, args=(messages,))
    with scrapes.scraping():
        ingest.start()
        wait_until(lambda: len(batches) == 1, timeout=5, what="the first message handed over")
        # The scrape sees what was counted before it began, the lock free: the batch waits.
        assert state.snapshot(20.0).events_by_type == {"task-sent": 1}
        assert [change.uuid for change in batches[0]] == ["t-0"]
        assert ingest.is_alive()
    ingest.join(5)
    assert not ingest.is_alive()
    assert state.snapshot(20.0).events_by_type == {"task-sent": 3}
    assert [[change.uuid for change in batch] for batch in batches] == [["t-0"], ["t-1", "t-2"]]


def test_a_long_scrape_holds_counting_up_once_and_for_a_bounded_time() -> None:
    scrapes = Scrapes()
    state = make_state(scrapes)
    with scrapes.scraping():  # a scrape that does not end
        began = time.monotonic()
        state.apply_batch([sent(f"t-{i}", 10.0 + i) for i in range(5)])
        took = time.monotonic() - began
        assert MAX_INGEST_GIVE_WAY <= took < MAX_GIVE_WAY  # one wait, not one per message
        began = time.monotonic()
        state.apply_batch([sent(f"u-{i}", 20.0 + i) for i in range(5)])
        assert time.monotonic() - began < MAX_INGEST_GIVE_WAY  # given way to it already
    assert state.snapshot(30.0).events_by_type == {"task-sent": 10}


def test_each_new_scrape_is_given_way_once() -> None:
    scrapes = Scrapes()
    state = make_state(scrapes)
    with scrapes.scraping():
        state.apply_batch([sent("t-0", 10.0), sent("t-1", 11.0)])
        with scrapes.scraping():  # another scraper begins while the first renders
            began = time.monotonic()
            state.apply_batch([sent("t-2", 12.0), sent("t-3", 13.0)])
            assert time.monotonic() - began >= MAX_INGEST_GIVE_WAY
    assert scrapes.begun == 2
    assert state.snapshot(20.0).events_by_type == {"task-sent": 4}


def test_without_a_scrape_a_batch_is_counted_at_once() -> None:
    state = make_state(Scrapes())
    batches: list[Sequence[TaskChange]] = []
    state.subscribe(batches.append)
    began = time.monotonic()
    state.apply_batch([sent(f"t-{i}", 10.0 + i) for i in range(3)])
    assert time.monotonic() - began < 0.5
    assert [len(batch) for batch in batches] == [3]


def test_the_history_writer_waits_for_a_scrape_between_units_of_work(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "tasks.sqlite3"))
    writer = HistoryWriter(
        store,
        None,
        budget_bytes=1 << 24,
        retention=Retention(default=0, failed=0, pending=0),
        flush_interval=0.05,
    )
    for i in range(3):
        writer.sink(task_events(f"t-{i}", T0, "tests.add", "task-succeeded"))
    scrapes = Scrapes()
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), kwargs={"scrapes": scrapes})
    try:
        with scrapes.scraping():
            thread.start()
            time.sleep(0.5)  # past several flush windows, within one give-way
            assert writer.stats.rows_written == 0
        wait_until(lambda: writer.stats.rows_written == 3, timeout=10, what="the rows written")
    finally:
        stop.set()
        thread.join(10)
    assert len(store.page(HistoryQuery(limit=10))) == 3


class _Watched:
    """An event source that notes whether a scrape was announced while it rendered."""

    def __init__(self, scrapes: Scrapes) -> None:
        self.scrapes = scrapes
        self.seen: list[bool] = []

    def render(self, fmt: Format) -> list[bytes]:
        self.seen.append(self.scrapes.active)
        return [b"# HELP up_total Up.\n# TYPE up_total counter\nup_total 1.0\n"]


def test_a_scrape_over_http_is_announced_while_the_page_is_made() -> None:
    scrapes = Scrapes()
    events = _Watched(scrapes)
    server = http.serve(
        ListenAddress("127.0.0.1", 0), MetricsPage(events, []), lambda: True, scrapes=scrapes
    )
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body = response.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.read() == b"ok\n"
    finally:
        server.shutdown()
        server.server_close()
    assert body == b"# HELP up_total Up.\n# TYPE up_total counter\nup_total 1.0\n"
    assert events.seen == [True]  # announced during the render; /healthz is no scrape
    assert scrapes.active is False
