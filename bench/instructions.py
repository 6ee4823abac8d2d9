"""The ingest thread's work on a fixed set of messages, for an instruction count under cachegrind.

Instruction counts do not move with the machine's load, so they compare two versions of the
ingest path where wall-clock timings cannot (bench/README.md). The messages are made once and
written to a file (``--write``); each measured process reads them back and handles them as the
exporter's ingest thread does (``Decoder.handle_batch``, 256 at a time, the state wired as
``app`` wires it: the recent-task store listening, the task bookkeeping on), or stops short of
that (``--mode none``: read the file and build the state only), so that the difference of the
two counts is the ingest path's::

    python -m bench.instructions --write /tmp/msgs.pickle --messages 1000
    PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        python -m bench.instructions --read /tmp/msgs.pickle --mode all
    (the same with --mode none; instructions per task event = (all - none) / task events;
    --mode nostore: nobody subscribed; --mode history: the task history's sink instead of the
    recent-task store, against --mode history-none)

It also runs on the tree before the package was renamed (``exporter``), which is how the
comparison with f49cc18 in bench/README.md was taken.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import pickle
import tempfile
import time
from typing import Any

try:  # the tree before the rename (f49cc18), when run from it
    import exporter as package  # type: ignore[import-not-found, unused-ignore]
except ImportError:
    import celery_events_exporter as package


def _ingest_path(subscriber: str = "store") -> tuple[Any, Any]:
    """(a state wired as the app wires it, with ``subscriber`` listening to its task changes:
    the recent-task store, the task history's sink (SQLite in a temporary directory, its
    writer thread not started) or none; a decoder over it)."""
    app: Any = __import__(f"{package.__name__}.app", fromlist=["app"])
    config_module: Any = __import__(f"{package.__name__}.config", fromlist=["config"])
    decoder_module: Any = __import__(f"{package.__name__}.decoder", fromlist=["decoder"])
    backlog: Any = __import__(f"{package.__name__}.intake.backlog", fromlist=["backlog"])
    config = config_module.Config()
    # The state as ``wire`` builds it: its batches check for scrapes in progress (none here).
    scrapes: dict[str, Any] = {}
    if "scrapes" in inspect.signature(app.build_state).parameters:
        scrapes_module: Any = __import__(f"{package.__name__}.scrapes", fromlist=["scrapes"])
        scrapes["scrapes"] = scrapes_module.Scrapes()
    if subscriber == "history":
        config = dataclasses.replace(config, data_dir=tempfile.mkdtemp(prefix="cee-instr-"))
        history = app.build_history(config, app.build_redactor(config))
        state = app.build_state(config, None, history, **scrapes)
        if hasattr(app, "settle"):
            app.settle()
        return state, decoder_module.Decoder(state, backlog.IntakeBacklog())
    store = app.build_store(config) if subscriber == "store" else None
    if not hasattr(app, "wire"):  # before the ledger: the queue tracking fed by the state
        holder: dict[str, Any] = {}
        queues = app.build_queues(
            config,
            store,
            online_workers=lambda now: holder["state"].online_workers(now),
            count_orphaned=lambda tasks: holder["state"].count_orphaned(tasks),
        )
        state = holder["state"] = app.build_state(config, store, queues.tracking)
    else:
        state = app.build_state(config, store, **scrapes)
    if hasattr(app, "settle"):  # what run does once the stages are built
        app.settle()
    return state, decoder_module.Decoder(state, backlog.IntakeBacklog())


def write(path: str, messages: int, workers: int, names: int) -> None:
    from bench.ingest import envelopes

    made, _ = envelopes(max(1, messages * 24 // 3), workers, names)
    chosen = made[:messages]
    with open(path, "wb") as out:
        pickle.dump([(m.content_type, m.body) for m in chosen], out)


def read(path: str, mode: str) -> None:
    message_module: Any = __import__(f"{package.__name__}.intake.message", fromlist=["message"])
    with open(path, "rb") as source:
        raw = pickle.load(source)
    now = time.time()
    messages = [
        message_module.RawMessage(now, content_type, body, enveloped=True)
        for content_type, body in raw
    ]
    state, decoder = _ingest_path("history" if mode.startswith("history") else "store")
    if mode == "decode":  # the messages opened and decoded, nothing counted
        state.apply_batch = lambda decoded: sum(1 for _ in decoded)
        for first in range(0, len(messages), decoder.BATCH):
            decoder.handle_batch(messages[first : first + decoder.BATCH])
    if mode == "nostore":  # decoded and counted, nobody subscribed to the task changes
        state, decoder = _ingest_path("none")
        mode = "all"
    if mode == "history":  # the task history's sink subscribed instead of the store
        mode = "all"
    if mode == "all":
        size = decoder.BATCH
        for first in range(0, len(messages), size):
            decoder.handle_batch(messages[first : first + size])
        events = sum(state.counts.events_by_type.get(t, 0) for t in state.counts.task_counts)
        sent = state.counts.events_by_type.get("task-sent", 0)
        print(f"{len(messages)} messages, {events + sent} task events")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write")
    parser.add_argument("--read")
    parser.add_argument(
        "--mode",
        choices=("none", "decode", "nostore", "all", "history-none", "history"),
        default="all",
    )
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--names", type=int, default=10)
    args = parser.parse_args(argv)
    if args.write:
        write(args.write, args.messages, args.workers, args.names)
    if args.read:
        read(args.read, args.mode)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
