"""Publish an emulated fleet's events through the real broker, at a set rate or as a burst.

Messages go through ``kombu.Producer.publish`` with Celery's arguments (exchange ``celeryev``,
JSON, the ``hostname`` header, delivery mode 1), so the bytes on the wire are kombu's own. The
publisher shares the machine's cores with the broker and the consumer under test, so what it does
while the clock runs must cost next to nothing, or it slows the faster consumer more than the
slower one: on Redis, kombu's ``_put_fanout`` is redirected into a capture (same topics, same
payload), each PUBLISH is encoded in Redis' protocol when the burst is prepared, and a few hundred
are written per system call; on AMQP, py-amqp's frames for each publish are captured when the
burst is prepared and written a few hundred messages per system call. Those captures touch
private attributes of kombu, redis-py and py-amqp, all through
``celery_events_exporter.intake.compat``.

Command line (prints the expected counts as JSON)::

    python -m bench.publisher --broker-url redis://127.0.0.1:6379/3 --workers 4 --names 3 \
        --tasks 1000 [--rate 20000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.events.event import get_exchange
from kombu import Connection, Producer
from kombu.utils.json import dumps as kombu_dumps

from bench.fleet import HEARTBEAT_FREQ, Expected, Fleet, Outgoing
from celery_events_exporter.intake import compat

PIPELINE_MESSAGES = 256


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message serialized by kombu, ready for the wire: on Redis ``target`` is the pub/sub
    topic and ``payload`` kombu's envelope; on AMQP ``target`` is the routing key and ``payload``
    the JSON body."""

    target: str
    payload: bytes | str
    headers: dict[str, Any]
    events: int
    wire: bytes = b""
    """On Redis, the PUBLISH command as Redis' protocol puts it on the wire."""


class BrokerPublisher:
    """Sends ``Outgoing`` messages to Celery's event exchange through kombu.

    ``prepare`` does kombu's serialization work (envelope, base64 body, delivery tag on Redis),
    ``transmit`` only moves bytes, so a burst can be prepared before the clock starts.
    """

    def __init__(self, broker_url: str, transport_options: dict[str, Any] | None = None) -> None:
        self.connection = Connection(broker_url, transport_options=transport_options or {})
        self.connection.ensure_connection(max_retries=3)
        self.channel: Any = self.connection.channel()
        self.exchange = get_exchange(self.connection, name="celeryev")
        self.exchange(self.channel).declare()
        self.producer = Producer(self.channel, exchange=self.exchange, auto_declare=False)
        self.redis = self.connection.transport.driver_type == "redis"
        self._staged: list[Prepared] = []
        if self.redis:
            compat.redis_stage_fanout(self.channel, self._stage_fanout)

    def _stage_fanout(
        self, exchange: str, message: dict[str, Any], routing_key: str, **_: Any
    ) -> None:
        # What kombu's fanout publish would PUBLISH, kept instead of sent.
        payload = kombu_dumps(message)
        events = self._events_of_current
        prefix = self.channel.global_keyprefix or ""  # what kombu's client prepends
        for topic in compat.redis_publish_topics(self.channel, exchange, routing_key):
            wire = resp_command(b"PUBLISH", (prefix + topic).encode(), payload.encode())
            self._staged.append(Prepared(topic, payload, {}, events, wire))

    _events_of_current = 0

    def prepare(self, messages: Iterable[Outgoing]) -> list[Prepared]:
        if not self.redis:
            return self._prepare_amqp(messages)
        for message in messages:
            self._events_of_current = message.events
            self._publish(message)
        staged, self._staged = self._staged, []
        return staged

    def _publish(self, message: Outgoing) -> None:
        """Publish as Celery's event dispatcher does; prepare() captures what goes out."""
        self.producer.publish(
            message.body,
            routing_key=message.routing_key,
            exchange=self.exchange.name,
            serializer="json",
            headers=message.headers,
            delivery_mode=1,
        )

    def transmit(self, prepared: list[Prepared]) -> int:
        """Put prepared messages on the wire; returns the number of events they carried."""
        events = 0
        if self.redis:
            pool = self.channel.client.connection_pool
            connection = pool.get_connection()
            try:
                connection.connect()
                sock = compat.redis_socket(connection)
                for start in range(0, len(prepared), PIPELINE_MESSAGES):
                    batch = prepared[start : start + PIPELINE_MESSAGES]
                    sock.sendall(b"".join(item.wire for item in batch))
                    events += sum(item.events for item in batch)
                _read_replies(sock, len(prepared))
            finally:
                pool.release(connection)
            return events
        write = self.channel.connection.transport.write
        for start in range(0, len(prepared), PIPELINE_MESSAGES):
            batch = prepared[start : start + PIPELINE_MESSAGES]
            write(b"".join(item.payload for item in batch))  # type: ignore[misc]
            events += sum(item.events for item in batch)
        return events

    def _prepare_amqp(self, messages: Iterable[Outgoing]) -> list[Prepared]:
        # py-amqp's own frames for each publish (method, content header, body), kept instead of
        # written: the analogue of the Redis pipeline, so the publisher outruns the consumer.
        out = []
        with compat.py_amqp_captured_writes(self.channel.connection.transport) as frames:
            for message in messages:
                self._publish(message)
                out.append(
                    Prepared(message.routing_key, b"".join(frames), message.headers, message.events)
                )
                frames.clear()
        return out

    def send(self, messages: Iterable[Outgoing]) -> int:
        return self.transmit(self.prepare(messages))

    def close(self) -> None:
        self.connection.release()


def resp_command(*parts: bytes) -> bytes:
    """A command in Redis' protocol (RESP2): an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _read_replies(sock: Any, count: int) -> None:
    """Read ``count`` one-line replies (PUBLISH answers an integer); fail on an error reply."""
    seen, tail = 0, b""
    while seen < count:
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError("redis closed the connection while publishing")
        data = tail + data
        if b"-" in data and any(line.startswith(b"-") for line in data.split(b"\r\n")):
            raise RuntimeError(f"redis refused a PUBLISH: {data[:200]!r}")
        seen += data.count(b"\r\n")
        tail = data[data.rfind(b"\r\n") + 2 :]


def make_fleet(broker_url: str, workers: int, names: int, fail_every: int = 50) -> Fleet:
    app = Celery("bench-fleet", broker=broker_url, set_as_current=False)
    return Fleet(app, workers, names, fail_every=fail_every)


def prepare_burst(fleet: Fleet, tasks: int) -> list[Outgoing]:
    """Every message of ``tasks`` tasks, bracketed by worker-online and worker-heartbeat: built
    before the clock starts, so the burst is published as fast as the broker takes it."""
    fleet.worker_event("worker-online")
    fleet.run_tasks(tasks)
    fleet.flush()
    fleet.worker_event("worker-heartbeat")
    return fleet.take()


def publish_at_rate(
    fleet: Fleet, publisher: BrokerPublisher, tasks: int, rate: float, chunk_tasks: int = 500
) -> float:
    """Publish ``tasks`` tasks at ``rate`` task events/s, heartbeats every 2 s; returns the
    seconds it took."""
    fleet.worker_event("worker-online")
    publisher.send(fleet.take())
    start = time.monotonic()
    next_beat = start
    sent = 0
    for messages in fleet.chunks(tasks, chunk_tasks):
        now = time.monotonic()
        if now >= next_beat:
            fleet.worker_event("worker-heartbeat")
            messages += fleet.take()
            next_beat = now + HEARTBEAT_FREQ
        sent += publisher.send(messages)
        ahead = start + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    fleet.worker_event("worker-heartbeat")
    publisher.send(fleet.take())
    return time.monotonic() - start


def expected_json(expected: Expected) -> dict[str, Any]:
    return {
        "events_by_type": dict(expected.events_by_type),
        "tasks": [[t, n, w, c] for (t, n, w), c in sorted(expected.tasks.items())],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--names", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.0, help="task events/s; 0 = burst")
    parser.add_argument("--fail-every", type=int, default=50)
    args = parser.parse_args(argv)
    fleet = make_fleet(args.broker_url, args.workers, args.names, args.fail_every)
    publisher = BrokerPublisher(args.broker_url)
    try:
        if args.rate > 0:
            seconds = publish_at_rate(fleet, publisher, args.tasks, args.rate)
        else:
            prepared = publisher.prepare(prepare_burst(fleet, args.tasks))
            start = time.monotonic()
            publisher.transmit(prepared)
            seconds = time.monotonic() - start
    finally:
        publisher.close()
    json.dump({"seconds": seconds, **expected_json(fleet.expected)}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
