"""Time the ingest thread's work in process: kombu's Redis envelopes, as the fleet's workers
publish them, opened, decoded and counted by ``Decoder.handle``, with the Tasks-view store
listening and without it. No broker and no socket: this isolates the cost per event that the
end-to-end run (``bench.run``) cannot split from reading the socket.

    python -m bench.ingest --tasks 100000
"""

from __future__ import annotations

import argparse
import time

from celery_events_exporter.app import build_state, settle
from celery_events_exporter.config import Config
from celery_events_exporter.decoder import Decoder
from celery_events_exporter.intake.backlog import IntakeBacklog
from celery_events_exporter.intake.message import RawMessage
from celery_events_exporter.tasks.store import RecentTasks

from .fleet import Expected
from .publisher import BrokerPublisher, make_fleet, prepare_burst

BROKER_URL = "redis://127.0.0.1:6379/15"
"""Only kombu's serialization runs: nothing is published."""


def envelopes(tasks: int, workers: int, names: int) -> tuple[list[RawMessage], Expected]:
    """The burst's messages as the Redis fast path queues them, and what the fleet emitted."""
    fleet = make_fleet(BROKER_URL, workers, names)
    publisher = BrokerPublisher(BROKER_URL)
    try:
        prepared = publisher.prepare(prepare_burst(fleet, tasks))
    finally:
        publisher.close()
    now = time.time()
    messages = [RawMessage(now, None, item.payload, enveloped=True) for item in prepared]
    return messages, fleet.expected


def time_handle(
    messages: list[RawMessage], store_size: int, repeat: int
) -> tuple[float, dict[str, int]]:
    """Least seconds to handle every message once, a fresh state (and store) each time, and
    the events the last state counted, by type (a timing of events lost says nothing)."""
    runs = []
    counted: dict[str, int] = {}
    for _ in range(repeat):
        state = build_state(Config(), RecentTasks(store_size) if store_size else None)
        decoder = Decoder(state, IntakeBacklog())
        handle, size = decoder.handle_batch, decoder.BATCH
        start = time.perf_counter()
        for first in range(0, len(messages), size):  # as the ingest thread takes them
            handle(messages[first : first + size])
        runs.append(time.perf_counter() - start)
        counted = state.snapshot(time.time()).events_by_type
    return min(runs), counted  # the least disturbed run: other processes share the cores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--names", type=int, default=10)
    parser.add_argument("--store", type=int, default=Config().max_recent_tasks)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    messages, expected = envelopes(args.tasks, args.workers, args.names)
    settle()  # the garbage collector's settings, as the exporter runs
    task_events = expected.task_events
    with_store, counted_with = time_handle(messages, args.store, args.repeat)
    without, counted_without = time_handle(messages, 0, args.repeat)
    for counted in (counted_with, counted_without):
        if counted != dict(expected.events_by_type):
            print(f"counted {counted}, the fleet emitted {dict(expected.events_by_type)}")
            return 1
    per_event = 1e6 / task_events
    print(
        f"{task_events} task events in {len(messages)} messages, each counted: "
        f"{with_store * per_event:.2f} µs/event with the store ({args.store}), "
        f"{without * per_event:.2f} µs/event without; "
        f"{task_events / with_store / 1000:.0f} k events/s with the store"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
