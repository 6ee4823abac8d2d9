"""Signals to the real process: SIGHUP (logrotate's habit, a closed terminal) is logged and
ignored, counting goes on; SIGTERM then stops it cleanly."""

from __future__ import annotations

import signal
import time

from tests.conftest import ExporterProcess, Processes, client, wait_until

WORKER = "hangup@signals"


def succeeded(exporter: ExporterProcess) -> float | None:
    return exporter.metrics("celery_task_succeeded").get(
        "celery_task_succeeded_total", task="tests.add", worker=WORKER
    )


def send_tasks(broker_url: str, count: int) -> None:
    with client(broker_url) as app:
        for i in range(count):
            app.send_task("tests.add", (i, i))


def test_sighup_is_logged_and_ignored_and_counting_goes_on(
    redis_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(redis_url)
    processes.worker(redis_url, WORKER)
    send_tasks(redis_url, 2)
    wait_until(lambda: succeeded(exporter) == 2.0, what="2 successes before SIGHUP")

    # logrotate sends one every rotation. One at a time: the kernel keeps one pending signal
    # of a kind, so two sent before the handler runs are one.
    def hangups_logged() -> int:
        return exporter.log().count("SIGHUP ignored")

    exporter.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: hangups_logged() == 1, timeout=10, what="the first SIGHUP's log line")
    exporter.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: hangups_logged() == 2, timeout=10, what="the second SIGHUP's log line")
    time.sleep(0.5)
    assert exporter.proc.poll() is None  # still running
    assert exporter.metrics().get("celery_exporter_broker_connected") == 1.0

    send_tasks(redis_url, 3)
    wait_until(lambda: succeeded(exporter) == 5.0, what="3 more successes after SIGHUP")
    time.sleep(0.5)
    assert succeeded(exporter) == 5.0

    assert exporter.stop(signal.SIGTERM) == 0
    log = exporter.log()
    assert "exporter stopped" in log
    assert '"signal": "SIGTERM"' in log
    assert "SIGHUP" not in log.split("shutting down")[1]  # SIGTERM, not the SIGHUPs, stopped it
