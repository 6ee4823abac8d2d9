"""A queue poller nobody can blind or make expensive (issue 20), against the real exporter and
a real Redis: 30 queues whose oldest message is 8 MB cost a poll kilobytes, not 240 MB (Redis'
own count of the bytes it sent); queue names from crafted task-sent events that stay empty give
their places to a real queue seen later."""

from __future__ import annotations

import time

import redis

from celery_events_exporter.queues.registry import IDLE_POLLS
from testkit.events import publish_sent
from tests.conftest import PrivateRedis, Processes, client, wait_until

QUEUES = 30
MESSAGE_BYTES = 8 * 1024 * 1024


def net_output_bytes(client: redis.Redis) -> int:
    return int(client.info("stats")["total_net_output_bytes"])


def test_a_poll_reads_a_bounded_number_of_bytes_whatever_the_messages(
    private_redis: PrivateRedis, processes: Processes
) -> None:
    private_redis.start()
    names = [f"big{i}" for i in range(QUEUES)]
    exporter = processes.exporter(
        private_redis.url,
        *(arg for name in names for arg in ("--queue", name)),
        "--queue-poll-interval",
        "0.5",
    )
    with client(private_redis.url) as app:
        for name in names:
            app.send_task("tests.add", args=("x" * MESSAGE_BYTES, 1), queue=name)

    def aged() -> bool:
        ages = exporter.metrics().by_label("celery_queue_oldest_task_age_seconds", "queue")
        return set(ages) == set(names)

    # The oldest task's id is read (its age comes from its task-sent event): the peek works.
    wait_until(aged, what="the age of every queue's oldest task")
    server = redis.Redis.from_url(private_redis.url)
    before = net_output_bytes(server)
    time.sleep(5.0)
    after = net_output_bytes(server)
    lengths = exporter.metrics().by_label("celery_queue_length", "queue")
    assert {lengths[name] for name in names} == {1.0}
    # ~10 polls in 5 s, each 30 queues x 4 priority lists: lengths and ids, a few kB; plus the
    # scrapes' and the event stream's traffic. One LINDEX of the 30 messages was 240 MB.
    assert after - before < 2 * 1024 * 1024, f"{after - before} bytes out of Redis in 5 s"


CRAFTED = 10
POLL_INTERVAL = 0.3
CAP = 5


def test_crafted_queue_names_give_their_places_to_a_queue_that_holds_work(
    redis_url: str, processes: Processes
) -> None:
    """10 queue names no task is in, at a cap of 5: 5 refused (the registry remembers as many
    refused names as its cap, so each is counted once). Each watched one is polled empty, so
    its crafted tasks stop waiting (the ledger) and the name is not offered again; idle for 3
    polls, it gives its place to a refused name. Every refused name gets a place once (5
    evictions), then a real queue seen later takes an idle one's place (the 6th) and keeps
    it."""
    exporter = processes.exporter(
        redis_url,
        "--max-queues", str(CAP),
        "--queue-poll-interval", str(POLL_INTERVAL),
        "--broadcast-interval", "60",
    )  # fmt: skip
    # Task-sent events only, as any broker client can publish.
    publish_sent(redis_url, [("tests.add", f"crafted{i}") for i in range(CRAFTED)])

    def counters() -> tuple[float | None, float | None, float | None]:
        metrics = exporter.metrics()
        return (
            metrics.get("celery_exporter_queues_dropped_total"),
            metrics.get("celery_exporter_queues_evicted_total"),
            metrics.get("celery_exporter_queues_watched"),
        )

    refused = float(CRAFTED - CAP)
    wait_until(
        lambda: counters() == (refused, refused, float(CAP)),
        what="every refused crafted name given a place once",
    )
    # The last names placed idle for IDLE_POLLS polls (0.9 s), with room to spare: the real
    # queue then takes a place at once (not refused first).
    time.sleep(IDLE_POLLS * POLL_INTERVAL + 2.0)
    # A real queue, seen later, holding a task.
    with client(redis_url) as app:
        app.send_task("tests.add", args=(1, 1), queue="real")
    wait_until(
        lambda: exporter.metrics().get("celery_queue_length", queue="real") == 1.0,
        timeout=30,
        what="the real queue watched",
    )
    assert counters() == (refused, refused + 1, float(CAP))
    # It holds work: it keeps its place, and nothing churns any more.
    time.sleep(3.0)
    assert exporter.metrics().get("celery_queue_length", queue="real") == 1.0
    assert counters() == (refused, refused + 1, float(CAP))
