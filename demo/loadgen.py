"""Send a realistic, reproducible mix of demo tasks to the broker.

Examples:
  python -m demo.loadgen --rate 5 --duration 60
  python -m demo.loadgen --count 20 --seed 7 --wait 60 --json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu.utils.url import maybe_sanitize_url

from demo.app import create_app
from demo.workload import Dispatch, dispatches


class _Stop(Exception):
    """Raised from the SIGTERM handler so `docker compose stop` still prints a summary."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The broker comes from CELERY_BROKER_URL, results (for --wait) from "
        "CELERY_RESULT_BACKEND. Without --count or --duration it runs until stopped.",
    )
    parser.add_argument("--rate", type=float, default=2.0, help="tasks per second (default 2)")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--count", type=int, help="stop after sending this many tasks")
    parser.add_argument("--seed", type=int, help="seed for a reproducible task mix")
    parser.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="then wait up to SECONDS for every outcome (needs CELERY_RESULT_BACKEND)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--heartbeat-file",
        type=Path,
        help="touch this file after every send (for a container healthcheck)",
    )
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be positive")
    if args.count is not None and args.count < 0:
        parser.error("--count must not be negative")
    if args.duration is not None and args.duration < 0:
        parser.error("--duration must not be negative")
    return args


def send_all(args: argparse.Namespace, app: Any) -> tuple[list[tuple[str, Dispatch]], float]:
    """Send at a steady pace; returns (task id, dispatch) pairs and the elapsed seconds."""
    sent: list[tuple[str, Dispatch]] = []
    started = time.monotonic()
    stream = dispatches(args.seed)
    if args.count is not None:
        stream = itertools.islice(stream, args.count)
    with app.producer_or_acquire() as producer:
        try:
            for index, dispatch in enumerate(stream):
                # Pace against the start time so slow sends do not drift the rate.
                due = started + index / args.rate
                if args.duration is not None and due - started >= args.duration:
                    break
                time.sleep(max(0.0, due - time.monotonic()))
                task_id = str(uuid.uuid4())
                app.send_task(
                    dispatch.task, kwargs=dispatch.kwargs, task_id=task_id, producer=producer
                )
                sent.append((task_id, dispatch))
                if args.heartbeat_file is not None:
                    args.heartbeat_file.touch()
        except (KeyboardInterrupt, _Stop):
            pass
    return sent, time.monotonic() - started


def collect(app: Any, sent: list[tuple[str, Dispatch]], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    outcomes: list[dict[str, Any]] = []
    for task_id, _ in sent:
        result = app.AsyncResult(task_id)
        # A task still running at the deadline is reported with its current state.
        with contextlib.suppress(CeleryTimeoutError):
            result.get(timeout=max(0.1, deadline - time.monotonic()), propagate=False)
        outcome: dict[str, Any] = {"state": result.state}
        if result.state == "SUCCESS":
            outcome["result"] = result.result
        elif result.state == "FAILURE":
            error = result.result
            outcome["exception"] = f"{type(error).__name__}: {error}"
        outcomes.append(outcome)
    return outcomes


def summarise(
    app: Any,
    args: argparse.Namespace,
    sent: list[tuple[str, Dispatch]],
    elapsed: float,
    outcomes: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    tasks: list[dict[str, Any]] = []
    for position, (task_id, dispatch) in enumerate(sent):
        entry: dict[str, Any] = {
            "id": task_id,
            "task": dispatch.task,
            "kwargs": dispatch.kwargs,
            "expect": dispatch.expect,
            "retries": dispatch.retries,
        }
        if outcomes is not None:
            entry["outcome"] = outcomes[position]
        tasks.append(entry)
    summary: dict[str, Any] = {
        "broker": maybe_sanitize_url(app.conf.broker_url),
        "seed": args.seed,
        "sent": len(sent),
        "elapsed": round(elapsed, 3),
        "by_task": dict(sorted(Counter(d.task for _, d in sent).items())),
        "expected": {
            "SUCCESS": sum(d.expect == "SUCCESS" for _, d in sent),
            "FAILURE": sum(d.expect == "FAILURE" for _, d in sent),
            "retries": sum(d.retries for _, d in sent),
        },
        "tasks": tasks,
    }
    if outcomes is not None:
        summary["outcomes"] = dict(sorted(Counter(o["state"] for o in outcomes).items()))
    return summary


def render_text(summary: dict[str, Any]) -> str:
    rate = summary["sent"] / summary["elapsed"] if summary["elapsed"] else 0.0
    lines = [
        f"sent {summary['sent']} tasks in {summary['elapsed']:.1f} s ({rate:.1f}/s) "
        f"to {summary['broker']} (seed {summary['seed']})"
    ]
    lines += [f"  {name:<14} {count:>6}" for name, count in summary["by_task"].items()]
    expected = summary["expected"]
    lines.append(
        f"designed: {expected['SUCCESS']} to succeed, {expected['FAILURE']} to fail, "
        f"{expected['retries']} retries"
    )
    if "outcomes" in summary:
        lines.append("outcomes: " + ", ".join(f"{s} {n}" for s, n in summary["outcomes"].items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    app = create_app()
    if args.wait is not None and not app.conf.result_backend:
        print("--wait needs a result backend: set CELERY_RESULT_BACKEND", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_stop)
    sent, elapsed = send_all(args, app)
    outcomes = collect(app, sent, args.wait) if args.wait is not None else None
    summary = summarise(app, args, sent, elapsed, outcomes)
    print(json.dumps(summary, indent=2) if args.json else render_text(summary), flush=True)
    if outcomes is not None:
        pairs = zip(outcomes, sent, strict=True)
        if any(outcome["state"] != dispatch.expect for outcome, (_, dispatch) in pairs):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
