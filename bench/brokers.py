"""Private brokers for one benchmark run: a redis-server on a free port, a RabbitMQ vhost."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testkit.brokers import RedisServer, ToolMissing, rabbitmq_vhost, rabbitmqctl, tool


def _tool(name: str) -> str:
    try:
        return tool(name)
    except ToolMissing as exc:
        raise SystemExit(str(exc)) from None


@contextmanager
def private_redis(unlimited_pubsub_buffer: bool = False) -> Iterator[str]:
    """A redis-server of our own. By default its pub/sub output-buffer limit is Redis' default
    (32 MB hard, 8 MB for 60 s); ``unlimited_pubsub_buffer`` lifts it, as the throughput anchors
    in the field notes were measured."""
    _tool("redis-server")
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as folder:
        server = RedisServer(Path(folder), unlimited_pubsub_buffer=unlimited_pubsub_buffer)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


EXPIRED = "bench.expired"
"""Exchange and queue of the private vhost that collect every message RabbitMQ expires from an
event queue: a policy makes it the event queues' dead-letter exchange."""


@contextmanager
def private_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of our own on the machine's RabbitMQ, deleted afterwards.

    A policy on the vhost dead-letters what expires in any ``celeryev.*`` queue (Celery's 5 s
    message TTL) into the ``EXPIRED`` queue, so ``expired_messages`` counts what a consumer
    would lose silently; the consumers declare their queues exactly as before (a policy is
    server side). The mechanism is proven on a probe queue before the vhost is handed out.
    """
    _tool("rabbitmqctl")
    with rabbitmq_vhost("bench") as url:
        vhost = url.rsplit("/", 1)[1]
        rabbitmqctl(
            "set_policy", "-p", vhost, "--apply-to", "queues", "bench-expired",
            r"^celeryev\.", json.dumps({"dead-letter-exchange": EXPIRED}),
        )  # fmt: skip
        _prove_dead_lettering(url)
        yield url


def _prove_dead_lettering(url: str) -> None:
    from kombu import Connection, Exchange, Queue

    with Connection(url) as conn:
        channel = conn.channel()
        Queue(EXPIRED, Exchange(EXPIRED, "fanout", durable=False), durable=False)(channel).declare()
        probe = Queue("celeryev.bench-probe", durable=False, message_ttl=0.01)(channel)
        probe.declare()
        conn.Producer(channel).publish(b"probe", routing_key=probe.name, exchange="")
        deadline = time.monotonic() + 10
        while expired_messages(url) != 1:
            if time.monotonic() > deadline:
                raise RuntimeError("RabbitMQ did not dead-letter an expired probe message")
            time.sleep(0.05)
        Queue(EXPIRED, durable=False)(channel).purge()
        probe.delete()


def expired_messages(url: str) -> int:
    """Messages RabbitMQ expired from the vhost's event queues so far."""
    return queue_depth(url, EXPIRED)


def queue_depth(url: str, name: str) -> int:
    """Messages ready in queue ``name``."""
    with QueueWatch(url, name) as watch:
        return watch.depth()


class QueueWatch:
    """Polls one queue's ready messages with passive declares on a connection of its own:
    cheap enough to sample a consumer's backlog during a run."""

    def __init__(self, url: str, name: str) -> None:
        from kombu import Connection

        self.name = name
        self.connection = Connection(url)
        self.channel: Any = self.connection.channel()

    def depth(self) -> int:
        _, ready, _ = self.channel.queue_declare(queue=self.name, passive=True)
        return int(ready)

    def __enter__(self) -> QueueWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.connection.release()


def vhost_queues(url: str) -> dict[str, tuple[int, int]]:
    """``rabbitmqctl list_queues -p VHOST name messages messages_ready``: {name: (messages,
    ready)}."""
    vhost = url.rsplit("/", 1)[1]
    out = subprocess.run(
        [_tool("rabbitmqctl"), "-q", "list_queues", "-p", vhost, "name", "messages",
         "messages_ready"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    # -q still prints a header row on some versions: keep the rows with numbers only.
    return {row[0]: (int(row[1]), int(row[2])) for row in rows
            if len(row) == 3 and row[1].isdigit()}  # fmt: skip


def redis_pattern_subscribers(url: str) -> int:
    """PUBSUB NUMPAT: how many pattern subscriptions the server holds (kombu uses PSUBSCRIBE)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.pubsub_numpat())
    finally:
        client.close()
