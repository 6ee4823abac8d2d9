"""Each private kombu / redis-py / py-amqp attribute that ``celery_events_exporter.intake.compat``
touches,
exercised against the real broker: an upgrade that renames or reshapes one fails here, by name,
before it silently breaks an intake path. The pins in pyproject.toml are the releases these
tests cover."""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
import json
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.events.event import get_exchange
from kombu import Connection, Consumer, Exchange, Producer, Queue
from packaging.requirements import Requirement

from celery_events_exporter.intake import compat
from celery_events_exporter.intake.event_queue import DEFAULT_EVENT_SETTINGS, event_queue
from celery_events_exporter.intake.kombu_reader import buffer_amqp_reads

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
    """``_fanout_queues`` + ``_get_subscribe_topics`` and ``_get_publish_topics``: the topics we
    compute receive exactly the messages kombu publishes to the fanout exchange, as Celery's
    EventDispatcher does, on the topics kombu says it publishes to."""
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
            topic
            for key in ("task.multi", "worker.heartbeat")
            for topic in compat.redis_publish_topics(conn.default_channel, exchange, key)
        ]
    assert len(published) == 2
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


@contextmanager
def subscribed_kombu_channel(redis_url: str) -> Iterator[tuple[Connection, Any, list[Any]]]:
    """kombu's Redis channel consuming the exporter's event queue as the kombu path does, once
    kombu has subscribed (its first drain); yields the connection, the channel and the list the
    delivered messages go to."""
    with Connection(redis_url) as conn:
        channel: Any = conn.channel()
        got: list[Any] = []
        queue = event_queue(conn, "celeryev.compat-probe", DEFAULT_EVENT_SETTINGS)
        with Consumer(channel, [queue], on_message=got.append, no_ack=True):
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.2)
            yield conn, channel, got


def test_redis_pubsub_ping_is_answered_and_swallowed(redis_url: str) -> None:
    """kombu ``Channel.subclient`` + redis-py ``PubSub.HEALTH_CHECK_MESSAGE`` and
    ``health_check_response_counter``: the PING goes out on the subscribed connection, kombu
    reads the PONG amid the messages, redis-py takes it off the counter and nothing is
    delivered for it."""
    with subscribed_kombu_channel(redis_url) as (conn, channel, got):
        assert compat.redis_pubsub_unanswered_pings(channel) == 0
        assert compat.redis_pubsub_ping(channel) is True
        assert compat.redis_pubsub_unanswered_pings(channel) == 1
        deadline = time.monotonic() + 5
        while compat.redis_pubsub_unanswered_pings(channel) and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.2)
        assert compat.redis_pubsub_unanswered_pings(channel) == 0, "the PONG was never counted"
        assert got == []


def test_redis_pubsub_ping_waits_for_the_subscription(redis_url: str) -> None:
    with Connection(redis_url) as conn:
        channel: Any = conn.channel()
        assert compat.redis_pubsub_ping(channel) is False
        assert compat.redis_pubsub_unanswered_pings(channel) == 0
        assert compat.redis_pubsub_socket(channel) is None


def test_redis_pubsub_socket_is_the_subscribers(redis_url: str) -> None:
    """redis-py ``Connection._sock`` of kombu's subclient: Redis lists the socket's address as a
    client with one pattern subscription."""
    with subscribed_kombu_channel(redis_url) as (_, channel, _):
        sock = compat.redis_pubsub_socket(channel)
        assert sock is not None
        host, port = sock.getsockname()[:2]
        clients = channel.client.client_list()
        (mine,) = [c for c in clients if c["addr"] == f"{host}:{port}"]
        assert (mine["psub"], mine["sub"]) == ("1", "0")


def test_kombu_forget_auto_delete_keeps_the_binding_on_close(redis_url: str) -> None:
    """kombu ``Channel.auto_delete_queues``: a channel's close deletes the bindings of the
    queues listed there, and of no other."""
    binding_key = f"_kombu.binding.{DEFAULT_EVENT_SETTINGS.exchange}"
    with Connection(redis_url) as conn:
        client = conn.default_channel.client
        for forget in (False, True):
            channel: Any = conn.channel()
            queue = event_queue(conn, f"celeryev.compat-forget-{forget}", DEFAULT_EVENT_SETTINGS)
            queue(channel).declare()
            assert queue.name in channel.auto_delete_queues
            assert client.scard(binding_key) == 1
            if forget:
                compat.kombu_forget_auto_delete(channel)
            channel.close()
            assert client.scard(binding_key) == (1 if forget else 0)


def test_redis_stage_fanout_gets_kombus_publish_instead_of_redis(redis_url: str) -> None:
    """kombu ``Channel._put_fanout``: a publish to the fanout exchange reaches the stage with
    kombu's envelope, the exchange and the routing key, and nothing is PUBLISHed."""
    staged: list[tuple[str, dict[str, Any], str]] = []

    def stage(exchange: str, message: dict[str, Any], routing_key: str, **_: Any) -> None:
        staged.append((exchange, message, routing_key))

    with Connection(redis_url) as conn:
        channel: Any = conn.channel()
        compat.redis_stage_fanout(channel, stage)
        topics = compat.redis_subscribe_topics(conn.default_channel, "celeryev")

        def publish() -> None:
            producer = Producer(channel, exchange=get_exchange(conn, name="celeryev"))
            producer.publish({"type": "task-sent"}, routing_key="task.sent", serializer="json")

        got = _received_on(conn, topics, publish)
    assert got == [], "kombu published despite the stage"
    ((exchange, message, routing_key),) = staged
    assert (exchange, routing_key) == ("celeryev", "task.sent")
    assert message["content-type"] == "application/json"
    assert json.loads(base64.b64decode(message["body"])) == {"type": "task-sent"}


def test_py_amqp_captured_writes_are_the_publish_frames(amqp_url: str) -> None:
    """py-amqp ``_AbstractTransport._write``: a publish inside the block sends nothing; its
    captured bytes, written later, deliver the message; after the block publishing works."""
    with Connection(amqp_url) as conn:
        conn.ensure_connection(max_retries=1)
        channel: Any = conn.channel()
        queue = Queue("compat.write", Exchange("compat.write", type="fanout"), exclusive=True)
        bound = queue(channel)
        bound.declare()  # and its exchange: a declare inside the block would wait forever
        producer = Producer(channel, exchange=queue.exchange, auto_declare=False)
        transport = conn.connection.transport
        with compat.py_amqp_captured_writes(transport) as writes:
            producer.publish({"n": 1}, serializer="json")
        assert writes, "py-amqp no longer writes through _write"
        assert bound.get(no_ack=True) is None, "the publish went out during the capture"
        transport.write(b"".join(writes))
        producer.publish({"n": 2}, serializer="json")
        bodies: list[Any] = []
        deadline = time.monotonic() + 10
        while len(bodies) < 2 and time.monotonic() < deadline:
            message = bound.get(no_ack=True)
            if message is not None:
                bodies.append(message.payload)
    assert bodies == [{"n": 1}, {"n": 2}]


class _NoCounterChannel:
    subclient = None  # kombu's cached property, shadowed by the instance's value


def test_bound_message_bodies_hands_a_stand_in_for_a_big_body(broker_url: str) -> None:
    """kombu's Consumer makes each delivery a Message through the channel's message_to_python
    and decodes its body after: a body over the limit reaches the callback as the stand-in,
    a small one as it was sent, on both transports."""
    got: list[Any] = []
    queue = Queue(f"compat-bound-{time.monotonic_ns()}", auto_delete=True, durable=False)
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        compat.bound_message_bodies(channel, 1_000, b'{"stand": "in"}')
        with Consumer(channel, [queue], callbacks=[lambda body, m: got.append(body)]):
            producer = Producer(conn.channel())
            for body in ({"small": "x" * 100}, {"big": "x" * 2_000}):
                producer.publish(body, routing_key=queue.name, serializer="json")
            deadline = time.monotonic() + 10
            while len(got) < 2 and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.5)
    assert got == [{"small": "x" * 100}, {"stand": "in"}]


def test_a_changed_shape_raises_compat_error() -> None:
    with pytest.raises(compat.CompatError, match="_fanout_queues"):
        compat.redis_subscribe_topics(SimpleNamespace(), "celeryev")
    with pytest.raises(compat.CompatError, match="_sock"):
        compat.redis_socket(SimpleNamespace(_sock=None))
    with pytest.raises(compat.CompatError, match="_read_buffer"):
        compat.py_amqp_read_buffer(SimpleNamespace())
    with pytest.raises(compat.CompatError, match="_quick_recv"):
        compat.replace_py_amqp_recv(SimpleNamespace(), lambda recv: recv)
    with pytest.raises(compat.CompatError, match="subclient"):
        compat.redis_pubsub_ping(SimpleNamespace())
    channel = _NoCounterChannel()
    channel.__dict__["subclient"] = SimpleNamespace(connection=object(), HEALTH_CHECK_MESSAGE="x")
    with pytest.raises(compat.CompatError, match="health_check_response_counter"):
        compat.redis_pubsub_ping(channel)
    with pytest.raises(compat.CompatError, match="health_check_response_counter"):
        compat.redis_pubsub_unanswered_pings(channel)
    channel.__dict__["subclient"] = SimpleNamespace(connection=SimpleNamespace(_sock=1))
    with pytest.raises(compat.CompatError, match="_sock"):
        compat.redis_pubsub_socket(channel)
    with pytest.raises(compat.CompatError, match="auto_delete_queues"):
        compat.kombu_forget_auto_delete(SimpleNamespace())
    with pytest.raises(compat.CompatError, match="_put_fanout"):
        compat.redis_stage_fanout(SimpleNamespace(), lambda *args, **kwargs: None)
    with pytest.raises(compat.CompatError, match="_get_publish_topics"):
        compat.redis_publish_topics(SimpleNamespace(), "celeryev", "task.multi")
    with pytest.raises(compat.CompatError, match="_get_publish_topics"):
        compat.redis_publish_topics(
            SimpleNamespace(_get_publish_topics=lambda e, k: ("t",)), "celeryev", "task.multi"
        )
    with pytest.raises(compat.CompatError, match="message_to_python"):
        compat.bound_message_bodies(SimpleNamespace(), 1, b"{}")
    bodiless = SimpleNamespace(message_to_python=lambda raw: SimpleNamespace())
    compat.bound_message_bodies(bodiless, 1, b"{}")
    with pytest.raises(compat.CompatError, match=r"Message\.body"):
        bodiless.message_to_python(b"raw")
    with (
        pytest.raises(compat.CompatError, match="_write"),
        compat.py_amqp_captured_writes(SimpleNamespace()),
    ):
        pass


@pytest.mark.parametrize("package", ["kombu", "amqp", "redis", "celery"])
def test_installed_release_is_one_the_pins_cover(package: str) -> None:
    """The tests above ran on the installed release: it must be inside pyproject's pin."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [Requirement(spec) for spec in project["dependencies"]]
    pin = next((p for p in pins if p.name == package), None)
    assert pin is not None, f"{package} is not pinned in pyproject.toml"
    assert pin.specifier, f"{package}'s pin has no version range"
    assert pin.specifier.contains(importlib.metadata.version(package))
