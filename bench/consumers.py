"""The consumers under test, each its own process: the exporter (console script) and the bare
receiver. Measures CPU time and peak RSS from /proc, and when a consumer has finished."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.brokers import redis_pattern_subscribers
from testkit.ports import free_port

BUSY_WINDOW = 0.25
"""Seconds over which a consumer's CPU use tells busy from idle (see ``wait_quiet``)."""

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    peak_rss_mb: float
    rss_mb: float


def usage(pid: int) -> Usage:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return Usage(cpu, hwm / 1024, rss / 1024)


class Consumer:
    proc: subprocess.Popen[bytes]

    def usage(self) -> Usage:
        return usage(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait_quiet(self, quiet: float = 1.0, timeout: float = 120.0) -> float:
        """Wait until the process has used no CPU for ``quiet`` seconds; returns the wall time of
        its last busy moment: when it finished counting what it had been sent.

        Busy means more than a tick (10 ms) of CPU within the last ``BUSY_WINDOW`` seconds, not
        within one 20 ms sample: on a loaded machine a process still counting may get a few ms
        per sample, and was then taken for idle while it had most of the burst left."""
        samples: deque[tuple[float, float]] = deque([(time.time(), self.usage().cpu_seconds)])
        last_busy = samples[0][0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.02)
            cpu = self.usage().cpu_seconds
            now = time.time()
            previous = samples[-1][1]
            while len(samples) > 1 and samples[1][0] <= now - BUSY_WINDOW:
                samples.popleft()
            samples.append((now, cpu))
            if cpu > previous and cpu - samples[0][1] > 0.015:
                last_busy = now
            if now - last_busy >= quiet:
                return last_busy
        raise TimeoutError("consumer still busy")


class Exporter(Consumer):
    def __init__(self, broker_url: str, log_path: Path, *args: str) -> None:
        command = shutil.which("celery-events-exporter")
        if command is None:
            raise SystemExit("celery-events-exporter is not installed (pip install -e .)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.broker_url = broker_url
        numpat = redis_pattern_subscribers(broker_url) if broker_url.startswith("redis") else 0
        # A scenario may run without bench.run's main, which makes the logs' folder (the smoke
        # tests call them directly, on a machine whose temporary folder may not have it yet).
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # A data directory of its own (the SQLite task history, the default store): nothing
        # left by an earlier run or shared with another one. Given in the environment, which
        # an exporter from before the history (a baseline tree) ignores, where the flag would
        # be refused.
        self.data_dir = tempfile.TemporaryDirectory(prefix="cee-bench-data-")
        environment = {**os.environ, "CELERY_EXPORTER_DATA_DIR": self.data_dir.name}
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [command, "--broker-url", broker_url, "--web.listen-address",
                 f"127.0.0.1:{self.port}", "--log.format", "json", *args],
                stdout=log, stderr=subprocess.STDOUT, env=environment,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while self.scrape_value("celery_exporter_broker_connected") != 1.0:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"exporter did not connect; see {log_path}")
                time.sleep(0.1)
            _wait_subscribed(broker_url, numpat)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        super().stop()
        self.data_dir.cleanup()

    def scrape(self) -> tuple[str, float]:
        start = time.perf_counter()
        response = requests.get(f"{self.url}/metrics", timeout=120)
        response.raise_for_status()
        return response.text, time.perf_counter() - start

    def scrape_value(self, name: str) -> float | None:
        try:
            text, _ = self.scrape()
        except requests.RequestException:
            return None
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else None


class BareReceiver(Consumer):
    def __init__(self, broker_url: str, expect: int, idle: float = 5.0) -> None:
        numpat = redis_pattern_subscribers(broker_url) if broker_url.startswith("redis") else 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_receiver", "--broker-url", broker_url,
             "--expect", str(expect), "--idle", str(idle)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError("bare receiver did not start")
        _wait_subscribed(broker_url, numpat)

    def result(self, timeout: float = 300.0) -> dict[str, float]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.proc.wait(timeout)
        out: dict[str, float] = json.loads(line)
        return out


def _wait_subscribed(broker_url: str, before: int) -> None:
    """On Redis, wait for the consumer's PSUBSCRIBE: events published earlier are lost."""
    if broker_url.startswith("redis"):
        deadline = time.monotonic() + 15
        while redis_pattern_subscribers(broker_url) <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("consumer never subscribed")
            time.sleep(0.05)
    else:
        time.sleep(0.5)


def parse_counts(text: str) -> tuple[dict[str, float], dict[tuple[str, str, str], float], int]:
    """(events by type, {(event type, task, worker): count}, number of series) from /metrics;
    task series at 0 (the exporter creates a pair's every state at its first event) are left
    out of the counts, not of the number of series."""
    by_type: dict[str, float] = {}
    tasks: dict[tuple[str, str, str], float] = {}
    series = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series += 1
            if sample.name == "celery_exporter_events_total":
                by_type[sample.labels["type"]] = sample.value
            elif sample.name.startswith("celery_task_") and sample.name.endswith("_total"):
                kind = sample.name[len("celery_task_") : -len("_total")]
                if (
                    sample.value
                    and "worker" in sample.labels
                    and kind not in ("sent", "exceptions")
                ):
                    key = (f"task-{kind}", sample.labels["task"], sample.labels["worker"])
                    tasks[key] = sample.value
    return by_type, tasks, series
