"""Forged inspect replies and rejected events against the real exporter, a real broker (Redis
and RabbitMQ) and real workers (issue 20): any broker client can read the exporter's inspect
requests off the ``celery.pidbox`` fanout exchange and answer them on ``reply.celery.pidbox``
with the request's ticket, exactly as a worker does. What a forger answers must add no worker,
rename no task events named, and change no value the heartbeats vouch for; a rejected event
sets nothing off.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from celery.events.event import get_exchange
from kombu import Connection, Consumer, Exchange, Producer, Queue

from celery_events_exporter.control import (
    COLLECT_WINDOW,
    GREETING_ATTEMPTS,
    GREETING_RETRY_AFTER,
    INSPECT_TIMEOUT,
    MAX_REPLY_BYTES,
)
from tests.conftest import ExporterProcess, Processes, client, wait_until

Forge = Callable[[dict[str, Any]], list[dict[str, Any]]]
"""A request's body -> the reply bodies ({hostname: value}) to send for it."""


class Forger:
    """A broker client that listens to every control request and answers some of them."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.forge: dict[str, Forge] = {}
        self.delay: dict[str, float] = {}
        """Seconds to wait before answering, by method: to come after the real worker's reply
        (kombu's own flattening lets the last reply for a hostname win)."""
        self.requests: Counter[str] = Counter()
        """Requests seen, by method (every broadcast, forged or not)."""
        self.destinations: list[tuple[str, tuple[str, ...] | None]] = []
        """(method, destination) of every request seen, in order; None: every worker."""
        self.sent: Counter[str] = Counter()
        self.budget: dict[str, int] = {}
        """Requests still to answer (with replies), by method (absent: every one)."""
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "the forger never bound its queue"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with Connection(self.broker_url) as conn:
            channel = conn.channel()
            requests = Queue(
                f"forger-{uuid.uuid4()}",
                Exchange("celery.pidbox", type="fanout", durable=False),  # as workers declare it
                auto_delete=True,
                durable=False,
            )
            replies = Producer(conn.channel())
            reply_exchange = Exchange("reply.celery.pidbox", type="direct", durable=False)

            def on_request(body: Any, message: Any) -> None:
                method = body.get("method")
                self.requests[method] += 1
                destination = body.get("destination")
                self.destinations.append((method, tuple(destination) if destination else None))
                forge = self.forge.get(method)
                ticket, reply_to = body.get("ticket"), body.get("reply_to")
                if forge is None or not ticket or not reply_to:
                    return
                forged = forge(body)
                if not forged:
                    return
                if method in self.budget:
                    if self.budget[method] <= 0:
                        return
                    self.budget[method] -= 1
                time.sleep(self.delay.get(method, 0.0))
                for reply in forged:
                    replies.publish(
                        reply,
                        exchange=reply_exchange,
                        routing_key=reply_to["routing_key"],
                        headers={"ticket": ticket, "clock": 0},
                        serializer="json",
                    )
                    self.sent[method] += 1

            with Consumer(
                channel, [requests], callbacks=[on_request], no_ack=True, accept=["json"]
            ):
                self._ready.set()
                while not self._stop.is_set():
                    try:
                        conn.drain_events(timeout=0.2)
                    except TimeoutError:
                        continue


@pytest.fixture
def forger(broker_url: str) -> Iterator[Forger]:
    forger = Forger(broker_url)
    forger.start()
    yield forger
    forger.stop()


def task_series_workers(exporter: ExporterProcess) -> set[str]:
    """The worker label values of every task series on the page."""
    metrics = exporter.metrics("celery_task_received_total")
    return set(metrics.by_label("celery_task_received_total", "worker"))


def test_forged_replies_add_no_worker_rename_no_task_change_no_concurrency(
    redis_url: str, processes: Processes
) -> None:
    # On Redis only: RabbitMQ drops the expiring tasks below itself (Celery sets their message
    # TTL), so no worker would send their task-revoked.
    forger = Forger(redis_url)
    forger.start()
    try:
        run_forged_replies(redis_url, processes, forger)
    finally:
        forger.stop()


def run_forged_replies(redis_url: str, processes: Processes, forger: Forger) -> None:
    """The scenario, with a forger listening from before the exporter starts."""
    # 100 workers nobody heard of, 200 tasks each: the 900 700 series.
    forger.forge["registered"] = lambda body: [
        {f"forged{i}@nowhere": [f"forged.task{j}" for j in range(200)]} for i in range(100)
    ]
    # And their queues, which the queue poller would watch.
    forger.forge["active_queues"] = lambda body: [
        {f"forged{i}@nowhere": [{"name": f"forged-q{i}"}]} for i in range(100)
    ]
    exporter = processes.exporter(
        redis_url,
        "--broadcast-interval",
        "1",
        "--max-tracked-tasks",
        "300",
        "--queue-poll-interval",
        "1",
    )
    real = processes.worker(redis_url, "real@replies", concurrency=3, extra=("-Q", "celery"))
    wait_until(
        lambda: exporter.metrics().get("celery_worker_concurrency", worker="real@replies") == 3.0,
        what="the pool size from the real worker's stats",
    )
    wait_until(lambda: forger.sent["registered"] >= 100, what="forged registered replies")

    # 100 tasks that will expire before a worker takes them: the worker that finally does sends
    # only task-revoked, which carries no name; task-sent named them.
    ids = [str(uuid.uuid4()) for _ in range(100)]
    with client(redis_url) as app:
        for task_id in ids:
            app.send_task("tests.add", (1, 2), task_id=task_id, queue="q20", expires=1.0)
    wait_until(
        lambda: (
            exporter.metrics().get("celery_task_sent_total", task="tests.add", queue="q20") == 100.0
        ),
        what="100 task-sent events",
    )
    time.sleep(1.2)  # past their expiry

    # Now every active request is answered with 1000 uuids of tasks no worker holds, as the
    # real worker and as a second one; stats say the real worker's pool is 1, as its own
    # process (pid copied from its heartbeats) and as another process.
    def forged_active(body: Any) -> list[dict[str, Any]]:
        hosts = body.get("destination") or ["real@replies"]
        return [
            {host: [{"id": str(uuid.uuid4()), "name": "unknown"} for _ in range(1000)]}
            for host in hosts
        ]

    forger.forge["active"] = forger.forge["reserved"] = forged_active
    forger.delay["stats"] = 0.3
    forger.forge["stats"] = lambda body: [
        {"real@replies": {"pid": real.proc.pid, "pool": {"max-concurrency": 1}}},
        {"real@replies": {"pid": 1, "pool": {"max-concurrency": 1}}},
    ]
    # A second worker's greeting asks active and reserved of it: the forger answers.
    processes.worker(redis_url, "second@replies", concurrency=1, extra=("-Q", "other"))
    wait_until(lambda: forger.sent["active"] >= 1, what="forged active replies")
    requests = forger.requests["stats"]
    wait_until(lambda: forger.requests["stats"] >= requests + 3, what="three more stats rounds")
    time.sleep(1.5)  # the last round's collection

    # The real worker takes the expired tasks: 100 task-revoked, named by their task-sent.
    with client(redis_url) as app:
        app.control.add_consumer("q20", destination=["real@replies"], reply=True)
    wait_until(
        lambda: (
            exporter.metrics().get(
                "celery_task_revoked_total", task="tests.add", worker="real@replies"
            )
            == 100.0
        ),
        what="100 task-revoked events named tests.add",
    )
    metrics = exporter.metrics()
    revoked = metrics.series("celery_task_revoked_total")
    assert {dict(labels)["task"] for labels, n in revoked.items() if n} == {"tests.add"}
    assert sum(revoked.values()) == 100.0
    assert metrics.get("celery_worker_concurrency", worker="real@replies") == 3.0
    assert task_series_workers(exporter) == {"real@replies", "second@replies"}
    workers = exporter.get("/api/workers").json()
    assert sorted(row["worker"] for row in workers) == ["real@replies", "second@replies"]
    queues = set(metrics.by_label("celery_queue_length", "queue"))
    assert not {queue for queue in queues if queue.startswith("forged")}
    assert "inspect replies left out" in exporter.log()

    # Exact counts over periodic rounds, which collect their whole window (a greeting's ends
    # when its workers answered: later forged replies are never read). Quiet first.
    forger.forge.clear()
    time.sleep(COLLECT_WINDOW + INSPECT_TIMEOUT + 1.0)
    before = dropped_by_reason(exporter)
    sent = Counter(forger.sent)
    rounds = 2
    forger.budget = {"active_queues": rounds, "stats": rounds}
    forger.forge["active_queues"] = lambda body: (
        [] if body.get("destination") else [{f"forged{i}@nowhere": []} for i in range(100)]
    )
    forger.forge["stats"] = lambda body: (
        []
        if body.get("destination")
        else [
            {"real@replies": {"pid": real.proc.pid, "pool": {"max-concurrency": 1}}},
            {"real@replies": {"pid": 1, "pool": {"max-concurrency": 1}}},
        ]
    )
    wait_until(
        lambda: forger.budget == {"active_queues": 0, "stats": 0},
        timeout=30,
        what="two periodic rounds forged",
    )
    time.sleep(COLLECT_WINDOW + INSPECT_TIMEOUT + 1.0)  # the last round read its replies
    assert forger.sent - sent == Counter({"active_queues": 100 * rounds, "stats": 2 * rounds})
    after = dropped_by_reason(exporter)
    # 100 unknown workers a round; per stats round, the real reply and two forged: the second
    # reply for the hostname drops two (the one kept so far and itself), the third one.
    assert {reason: after[reason] - before[reason] for reason in after} == {
        "unknown_worker": 100.0 * rounds,
        "duplicate": 3.0 * rounds,
        "mismatch": 0.0,
        "too_many": 0.0,
        "too_big": 0.0,
        "malformed": 0.0,
        "late": 0.0,
    }
    assert exporter.metrics().get("celery_worker_concurrency", worker="real@replies") == 3.0


def dropped_by_reason(exporter: ExporterProcess) -> dict[str, float]:
    metrics = exporter.metrics("celery_exporter_control_replies_dropped")
    return metrics.by_label("celery_exporter_control_replies_dropped_total", "reason")


def test_a_rejected_worker_online_sets_off_no_broadcast(
    broker_url: str, processes: Processes, forger: Forger
) -> None:
    exporter = processes.exporter(broker_url, "--broadcast-interval", "600")
    processes.worker(broker_url, "listener@replies", concurrency=1)
    wait_until(
        lambda: (
            exporter.metrics().get("celery_worker_concurrency", worker="listener@replies") == 1.0
        ),
        what="the greeting's stats",
    )
    time.sleep(1.5)  # the greeting's last requests
    before = dict(forger.requests)
    with Connection(broker_url) as conn:
        producer = Producer(conn.default_channel, exchange=get_exchange(conn))
        for i in range(20):
            producer.publish(
                orjson.dumps(
                    {
                        "type": "worker-online",
                        "hostname": f"w{i}@rejected",
                        "timestamp": time.time(),
                        "freq": -1,
                    }
                ),
                routing_key="worker.online",
                content_type="application/json",
                content_encoding="utf-8",
            )
    wait_until(
        lambda: (
            exporter.metrics().get("celery_exporter_events_rejected_total", reason="invalid_field")
            == 20.0
        ),
        what="20 rejected worker-online events",
    )
    time.sleep(3.0)  # a broadcast, if any were set off, would be out by now
    assert dict(forger.requests) == before
    # An accepted one greets only its worker: requests with it as their only destination. It
    # never answers, so it is asked nothing more and greeted again until its last attempt.
    seen = len(forger.destinations)
    with Connection(broker_url) as conn:
        producer = Producer(conn.default_channel, exchange=get_exchange(conn))
        producer.publish(
            orjson.dumps(
                {"type": "worker-online", "hostname": "new@accepted", "timestamp": time.time()}
            ),
            routing_key="worker.online",
            content_type="application/json",
            content_encoding="utf-8",
        )
    greetings = [("enable_events", ("new@accepted",))] * GREETING_ATTEMPTS
    wait_until(
        lambda: forger.destinations[seen:] == greetings,
        timeout=GREETING_ATTEMPTS * (INSPECT_TIMEOUT + GREETING_RETRY_AFTER) + 10,
        what="every greeting of the silent worker",
    )
    time.sleep(INSPECT_TIMEOUT + GREETING_RETRY_AFTER + 1.0)  # another would be out by now
    assert forger.destinations[seen:] == greetings


def test_a_reply_over_the_byte_cap_is_dropped_undecoded(
    broker_url: str, processes: Processes, forger: Forger
) -> None:
    """A forged 5 MiB ``stats`` reply in the name of a real worker, to every periodic round
    (which collects its whole window: every reply is read), is left out before it is decoded
    (``too_big``), so it neither costs its objects nor makes the worker's own reply a
    duplicate."""
    big = ["x" * 1_000 + str(i) for i in range(5 * 1024)]  # ~5 MiB of JSON
    assert len(orjson.dumps(big)) > MAX_REPLY_BYTES

    def forged_stats(body: dict[str, Any]) -> list[dict[str, Any]]:
        if body.get("destination"):  # a greeting's: its collection may end before it is read
            return []
        return [{"big@replies": {"pid": 1, "pool": {"max-concurrency": 1}, "padding": big}}]

    forger.forge["stats"] = forged_stats
    exporter = processes.exporter(broker_url, "--broadcast-interval", "1")
    processes.worker(broker_url, "big@replies", concurrency=2)
    wait_until(lambda: forger.sent["stats"] >= 3, timeout=30, what="three forged stats replies")
    del forger.forge["stats"]
    time.sleep(COLLECT_WINDOW + 1.0)  # the last round that got one has read it
    metrics = exporter.metrics()
    assert metrics.get("celery_worker_concurrency", worker="big@replies") == 2.0
    dropped = metrics.by_label("celery_exporter_control_replies_dropped_total", "reason")
    assert dropped == {
        "unknown_worker": 0.0,
        "duplicate": 0.0,
        "mismatch": 0.0,
        "too_many": 0.0,
        "too_big": float(forger.sent["stats"]),
        "malformed": 0.0,
        "late": 0.0,
    }
    assert "reason=too_big" in exporter.log() or '"reason": "too_big"' in exporter.log()
