"""The demo workload against a real prefork worker and the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image, ImageChops, ImageFilter, ImageStat

from demo import imaging
from demo.app import create_app
from demo.workload import dispatches
from tests.conftest import leased_redis_db

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
COUNT, SEED = 16, 20261127
WORKER_NAME = f"demo1@{socket.gethostname()}"


@dataclass(frozen=True)
class Env:
    db: int
    token: str
    vars: dict[str, str]


@dataclass(frozen=True)
class Worker:
    env: Env
    app: Any
    log: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with leased_redis_db() as db:
        yield from _env(db, tmp_path_factory)


def _env(db: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    token = uuid.uuid4().hex[:10]
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    variables = {
        **os.environ,
        "CELERY_BROKER_URL": url,
        "CELERY_RESULT_BACKEND": url,
        "DEMO_DATA_DIR": str(tmp_path_factory.mktemp("demo-data")),
        "DEMO_QUEUE": f"demo-test-{token}",
        "PYTHONPATH": str(REPO),
    }
    yield Env(db, token, variables)
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    stale = [*client.scan_iter(f"*{token}*"), *client.scan_iter("celery-task-meta-*")]
    if stale:
        client.delete(*stale)
    # kombu's fanout bookkeeping is shared by every user of the db: drop it
    # only when nothing else is left there.
    if set(client.keys()) == {b"_kombu.binding_deadlines"}:
        client.delete("_kombu.binding_deadlines")
    client.close()


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Warm-stop the worker and its pool children, then kill whatever is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def worker(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "demo.app", "worker"]
    command += ["-c", "2", "-n", "demo1@%h", "--loglevel", "INFO"]
    app = create_app(env.vars)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env.vars,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[WORKER_NAME], timeout=0.5):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"worker did not come up:\n{log.read_text()[-4000:]}")
        yield Worker(env, app, log)
    finally:
        _stop_group(process)
        app.close()


class EventLog:
    """Every event on the stream, captured by a real EventReceiver in a thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _record(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self._record})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def start(self) -> None:
        """Start, then wait until a probe event of our own comes back: Redis keeps
        nothing for a subscriber that is not connected yet."""
        self.thread.start()
        probe = f"demo-test-probe-{uuid.uuid4().hex}"
        deadline = time.monotonic() + 20
        with self.app.connection_for_write() as connection:
            dispatcher = self.app.events.Dispatcher(connection, enabled=True)
            while not self.matching(lambda event: event["type"] == probe):
                assert time.monotonic() < deadline, "the event receiver never subscribed"
                dispatcher.send(probe)
                time.sleep(0.2)
            dispatcher.close()

    def matching(self, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self.lock:
            return [event for event in self.events if keep(event)]

    def of_task(self, task_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        return self.matching(
            lambda event: event.get("uuid") == task_id and kind in (None, event["type"])
        )

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def run(worker: Worker) -> Iterator[tuple[dict[str, Any], EventLog]]:
    """Send the seeded mix once; all tests below look at the same run."""
    events = EventLog(worker.app)
    events.start()
    try:
        command = [sys.executable, "-m", "demo.loadgen", "--count", str(COUNT)]
        command += ["--seed", str(SEED), "--rate", "20", "--wait", "120", "--json"]
        done = subprocess.run(
            command, cwd=REPO, env=worker.env.vars, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, (
            f"loadgen exited {done.returncode}\n{done.stdout}\n{done.stderr}\n"
            f"worker log:\n{worker.log.read_text()[-4000:]}"
        )
        summary: dict[str, Any] = json.loads(done.stdout)
        ids = {task["id"] for task in summary["tasks"]}

        def finished() -> set[str]:
            terminal = {"task-succeeded", "task-failed"}
            return {e["uuid"] for e in events.matching(lambda e: e["type"] in terminal)}

        # Prefork workers batch task events; give the last batch time to land.
        deadline = time.monotonic() + 30
        while not ids <= finished() and time.monotonic() < deadline:
            time.sleep(0.2)
        yield summary, events
    finally:
        events.stop()


def test_plan_is_reproducible_and_covers_every_behaviour(
    run: tuple[dict[str, Any], EventLog],
) -> None:
    summary, _ = run
    expected = list(itertools.islice(dispatches(SEED), COUNT))
    sent = [(t["task"], t["kwargs"], t["expect"], t["retries"]) for t in summary["tasks"]]
    assert sent == [(d.task, d.kwargs, d.expect, d.retries) for d in expected]
    assert summary["sent"] == COUNT
    assert set(summary["by_task"]) == {
        "blurit.image",
        "blurit.fetch",
        "blurit.probe",
        "blurit.ping",
    }
    # The seed must exercise retries and failures, or the checks below prove little.
    assert summary["expected"]["retries"] > 0
    assert summary["expected"]["FAILURE"] > 0
    assert summary["outcomes"] == {
        state: count for state, count in summary["expected"].items() if state != "retries"
    }


def _edge_energy(image: Image.Image) -> float:
    return float(ImageStat.Stat(image.convert("L").filter(ImageFilter.FIND_EDGES)).mean[0])


def test_blur_writes_blurred_outputs_and_the_seed_result_shape(
    run: tuple[dict[str, Any], EventLog], env: Env
) -> None:
    summary, _ = run
    data = Path(env.vars["DEMO_DATA_DIR"])
    blurs = [task for task in summary["tasks"] if task["task"] == "blurit.image"]
    assert blurs
    for task in blurs:
        result = task["outcome"]["result"]
        assert set(result) == {"input_image", "output_image", "chronos"}
        assert result["input_image"] == task["kwargs"]["input_image"]
        assert result["output_image"] == task["kwargs"]["output_image"]
        chronos = result["chronos"]
        assert set(chronos["childs"]) == {"load", "denoise", "blur", "store"}
        assert 0 < sum(chronos["childs"].values()) <= chronos["total"]

        source = data / task["kwargs"]["input_image"]["path"]
        with (
            Image.open(source) as original,
            Image.open(data / task["kwargs"]["output_image"]["path"]) as output,
        ):
            assert output.format == "JPEG"
            assert output.size == original.size == imaging.input_dimensions(source)
            expected = imaging.blur(imaging.denoise(original))
            # Only JPEG re-encoding separates the file from the in-memory blur.
            difference = ImageStat.Stat(ImageChops.difference(output.convert("RGB"), expected))
            assert max(difference.mean) < 2.0
            assert _edge_energy(output) < _edge_energy(original) / 3


def test_flaky_fetch_retries_exactly_as_designed(run: tuple[dict[str, Any], EventLog]) -> None:
    summary, events = run
    fetches = [task for task in summary["tasks"] if task["task"] == "blurit.fetch"]
    assert fetches
    for task in fetches:
        fail_times = task["kwargs"]["fail_times"]
        assert task["outcome"] == {
            "state": "SUCCESS",
            "result": {"url": task["kwargs"]["url"], "attempts": fail_times + 1},
        }
        own = events.of_task(task["id"])
        kinds = Counter(event["type"] for event in own)
        assert kinds["task-retried"] == fail_times
        assert kinds["task-received"] == fail_times + 1
        assert kinds["task-succeeded"] == 1
        for event in own:
            if event["type"] == "task-retried":
                assert event["exception"].startswith("ConnectionResetError('connection reset by")


def test_corrupt_uploads_fail_and_good_ones_succeed(run: tuple[dict[str, Any], EventLog]) -> None:
    summary, events = run
    probes = [task for task in summary["tasks"] if task["task"] == "blurit.probe"]
    assert {task["expect"] for task in probes} == {"SUCCESS", "FAILURE"}
    for task in probes:
        outcome = task["outcome"]
        raw = base64.b64decode(task["kwargs"]["payload_b64"])
        failed = events.of_task(task["id"], "task-failed")
        if task["expect"] == "FAILURE":
            assert outcome["state"] == "FAILURE"
            assert outcome["exception"].startswith(
                "UnidentifiedImageError: cannot identify image file"
            )
            assert len(failed) == 1
            assert failed[0]["exception"].startswith("UnidentifiedImageError(")
            assert failed[0]["hostname"] == WORKER_NAME
        else:
            with Image.open(io.BytesIO(raw)) as sent:
                assert outcome["result"] == {
                    "format": "PNG",
                    "width": sent.width,
                    "height": sent.height,
                    "mode": "RGB",
                }
            assert failed == []


def test_every_task_is_seen_on_the_event_stream(run: tuple[dict[str, Any], EventLog]) -> None:
    """The demo's config alone (no -E on the worker) makes both sides publish events."""
    summary, events = run
    by_task: dict[str, Counter[str]] = defaultdict(Counter)
    for event in events.matching(lambda event: event["type"].startswith("task-")):
        by_task[event["uuid"]][event["type"]] += 1
    for task in summary["tasks"]:
        kinds = by_task[task["id"]]
        attempts = task["retries"] + 1
        terminal = "task-succeeded" if task["expect"] == "SUCCESS" else "task-failed"
        assert kinds["task-sent"] == attempts, (task["task"], kinds)
        assert kinds["task-received"] == attempts, (task["task"], kinds)
        assert kinds["task-started"] == attempts, (task["task"], kinds)
        assert kinds[terminal] == 1, (task["task"], kinds)
    ping = next(task for task in summary["tasks"] if task["task"] == "blurit.ping")
    assert ping["outcome"] == {"state": "SUCCESS", "result": "pong"}
    workers = {e["hostname"] for e in events.matching(lambda e: e["type"] == "task-started")}
    assert workers == {WORKER_NAME}


def test_duration_mode_sends_rate_times_duration(env: Env) -> None:
    queue = f"demo-test-duration-{env.token}"
    command = [sys.executable, "-m", "demo.loadgen", "--rate", "10", "--duration", "0.5"]
    done = subprocess.run(
        [*command, "--seed", "3", "--json"],
        cwd=REPO,
        env={**env.vars, "DEMO_QUEUE": queue},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sent"] == 5
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=env.db)
    try:
        assert client.llen(queue) == 5
    finally:
        client.delete(queue)
        client.close()


def test_wait_without_a_result_backend_is_refused(env: Env) -> None:
    variables = {**env.vars, "CELERY_RESULT_BACKEND": ""}
    done = subprocess.run(
        [sys.executable, "-m", "demo.loadgen", "--count", "1", "--wait", "5"],
        cwd=REPO,
        env=variables,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--wait needs a result backend: set CELERY_RESULT_BACKEND" in done.stderr
