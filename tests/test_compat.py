"""Each private kombu / redis-py / py-amqp attribute that ``exporter.intake.compat`` touches,
exercised against the real broker: an upgrade that renames or reshapes one fails here, by name,
before it silently breaks an intake path. The pins in pyproject.toml are the releases these
tests cover."""

from __future__ import annotations

import importlib.metadata
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.events.event import get_exchange
from kombu import Connection, Consumer, Exchange, Producer, Queue
from packaging.requirements import Requirement

from exporter.intake import compat
from exporter.intake.kombu_reader import buffer_amqp_reads

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def redis_connection(redis_url: str) -> Iterator[Connection]:
    with Connection(redis_url) as conn:
        yield conn


def _received_on(conn: Connection, topics: list[str], publish: Callable[[], None]) -> list[Any]:
    """PSUBSCRIBE ``topics`` with a plain redis-py client, run ``publish``, return what arrived."""
    client = conn.default_channel.client
    pubsub = client.pubsub()
    # kombu's client prefixes keys itself; a plain client of the same pool must not.
    pubsub.psubscribe(*topics)
    try:
        deadline = time.monotonic() + 5
        while pubsub.get_message(timeout=1) is None and time.monotonic() < deadline:
            pass  # the psubscribe confirmations
        publish()
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is None:
                break
            if message["type"] == "pmessage":
                got.append(message)
        return got
    finally:
        pubsub.close()


@pytest.mark.parametrize("exchange", ["celeryev", "myapp.events"])
@pytest.mark.parametrize("options", [{}, {"fanout_prefix": "app:"}, {"fanout_patterns": False}])
def test_redis_topics_are_where_kombu_publishes(
    redis_url: str, exchange: str, options: dict[str, Any]
) -> None:
    """``_fanout_queues`` + ``_get_subscribe_topics``: the topics we compute receive exactly the
    messages kombu publishes to the fanout exchange, as Celery's EventDispatcher does."""
    with Connection(redis_url, transport_options=options) as conn:
        topics = compat.redis_subscribe_topics(conn.default_channel, exchange)
        assert topics and all(isinstance(topic, str) for topic in topics)
        assert not conn.default_channel._fanout_queues, "the marker binding must be removed"

        def publish() -> None:
            producer = Producer(conn.channel(), exchange=get_exchange(conn, name=exchange))
            for routing_key in ("task.multi", "worker.heartbeat"):
                producer.publish({"type": routing_key}, routing_key=routing_key)

        got = _received_on(conn, topics, publish)
        published = [
            conn.default_channel._get_publish_topic(exchange, key)
            for key in ("task.multi", "worker.heartbeat")
        ]
    assert [m["channel"].decode() for m in got] == published


def test_redis_topics_carry_the_global_key_prefix(redis_url: str) -> None:
    with Connection(redis_url, transport_options={"global_keyprefix": "tenant_"}) as conn:
        topics = compat.redis_subscribe_topics(conn.default_channel, "celeryev")
        assert all(topic.startswith("tenant_") for topic in topics)

        def publish() -> None:
            producer = Producer(conn.channel(), exchange=get_exchange(conn, name="celeryev"))
            producer.publish({"type": "x"}, routing_key="task.multi")

        # The plain pub/sub client of kombu's pool adds the prefix itself: subscribe unprefixed.
        unprefixed = [topic[len("tenant_") :] for topic in topics]
        got = _received_on(conn, unprefixed, publish)
    assert [m["channel"].decode() for m in got] == [
        topics[0].replace("*", "task.multi")[len("tenant_") :]
    ]


def test_redis_connection_socket_speaks_resp(redis_connection: Connection) -> None:
    """redis-py ``Connection._sock``: the connected socket the Redis fast path reads."""
    connection = redis_connection.default_channel.pool.make_connection()
    try:
        connection.connect()
        sock = compat.redis_socket(connection)
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
    finally:
        connection.disconnect()


def test_py_amqp_read_buffer_is_empty_after_consume_ok(amqp_url: str) -> None:
    """py-amqp ``_read_buffer``: bytes read but unparsed, empty once consume-ok is read."""
    with Connection(amqp_url) as conn:
        conn.ensure_connection(max_retries=1)
        channel: Any = conn.channel()
        Queue("compat.probe", exclusive=True)(channel).declare()
        channel.basic_consume("compat.probe", no_ack=True, callback=lambda message: None)
        transport = conn.connection.transport
        assert compat.is_py_amqp_tcp_transport(transport)
        assert compat.py_amqp_read_buffer(transport) == b""


def test_py_amqp_recv_replacement_reads_every_frame(amqp_url: str) -> None:
    """py-amqp ``TCPTransport._quick_recv``: once replaced, every frame is read through ours and
    the deliveries still arrive whole."""
    calls: list[int] = []

    def spy(original: Callable[[int], bytes]) -> Callable[[int], bytes]:
        def recv(n: int) -> bytes:
            calls.append(n)
            return original(n)

        return recv

    with Connection(amqp_url) as conn:
        conn.ensure_connection(max_retries=1)
        compat.replace_py_amqp_recv(conn.connection.transport, spy)
        buffer_amqp_reads(conn)  # and the exporter's own wrapper on top, as the kombu path does
        queue = Queue("compat.recv", Exchange("compat", type="fanout"), exclusive=True)
        got: list[Any] = []
        with Consumer(conn.channel(), [queue], callbacks=[lambda body, m: got.append(body)]):
            producer = Producer(conn.channel(), exchange=queue.exchange)
            for i in range(3):
                producer.publish({"n": i}, serializer="json")
            deadline = time.monotonic() + 10
            while len(got) < 3 and time.monotonic() < deadline:
                conn.drain_events(timeout=1)
    assert got == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert calls, "py-amqp no longer reads through _quick_recv"


def test_a_changed_shape_raises_compat_error() -> None:
    with pytest.raises(compat.CompatError, match="_fanout_queues"):
        compat.redis_subscribe_topics(SimpleNamespace(), "celeryev")
    with pytest.raises(compat.CompatError, match="_sock"):
        compat.redis_socket(SimpleNamespace(_sock=None))
    with pytest.raises(compat.CompatError, match="_read_buffer"):
        compat.py_amqp_read_buffer(SimpleNamespace())
    with pytest.raises(compat.CompatError, match="_quick_recv"):
        compat.replace_py_amqp_recv(SimpleNamespace(), lambda recv: recv)


@pytest.mark.parametrize("package", ["kombu", "amqp", "redis", "celery"])
def test_installed_release_is_one_the_pins_cover(package: str) -> None:
    """The tests above ran on the installed release: it must be inside pyproject's pin."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [Requirement(spec) for spec in project["dependencies"]]
    pin = next((p for p in pins if p.name == package), None)
    assert pin is not None, f"{package} is not pinned in pyproject.toml"
    assert pin.specifier, f"{package}'s pin has no version range"
    assert pin.specifier.contains(importlib.metadata.version(package))
