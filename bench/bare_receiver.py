"""The baseline: a bare Celery ``EventReceiver`` whose only handler counts events.

Run as its own process by the benchmark; prints one JSON line ``{"ready": true}`` once it
consumes, then ``{"count": N, "done_at": unix time}`` when it has counted ``--expect`` events or
has seen none for ``--idle`` seconds (events lost: it stops waiting).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from celery import Celery


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--idle", type=float, default=5.0)
    args = parser.parse_args(argv)

    app = Celery("bench-bare", broker=args.broker_url, set_as_current=False)
    count = 0
    last = time.time()

    def on_event(event: dict[str, Any]) -> None:
        nonlocal count, last
        count += 1
        last = time.time()

    def report(done: bool) -> None:
        times = os.times()
        status = Path("/proc/self/status").read_text()
        hwm = int(status.split("VmHWM:")[1].split()[0]) / 1024
        result = {"count": count, "done_at": last, "complete": done,
                  "cpu_seconds": times.user + times.system, "peak_rss_mb": hwm}  # fmt: skip
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()

    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": on_event})
        with receiver.consumer_context(wakeup=False) as (connection, _, _):
            print(json.dumps({"ready": True}), flush=True)
            while count < args.expect:
                try:
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=1.0)
                except connection.connection_errors:
                    # What a plain EventReceiver does when Redis cuts it off: it stops.
                    report(False)
                    return 0
                if count and time.time() - last > args.idle:
                    report(False)
                    return 0
    report(True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
