"""Pure logic of the fast intake paths: kombu's topics, envelopes, buffered reads."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from kombu import Connection

from celery_events_exporter.app import build_state
from celery_events_exporter.config import Config
from celery_events_exporter.decoder import Decoder
from celery_events_exporter.events.decode import b64decode, open_envelope
from celery_events_exporter.intake.backlog import IntakeBacklog
from celery_events_exporter.intake.kombu_reader import BufferedRecv
from celery_events_exporter.intake.message import RawMessage
from celery_events_exporter.intake.reader import intake_connection, is_redis_broker
from celery_events_exporter.intake.redis import is_redis_url, subscribe_topics


def _channel(url: str, **options: object) -> Any:
    """kombu's own Redis channel for ``url`` (the machine's Redis): its topic logic is the
    reference."""
    connection = Connection(url, transport_options=options)
    _connections.append(connection)
    return connection.default_channel


_connections: list[Connection] = []


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    while _connections:
        _connections.pop().release()


@pytest.mark.parametrize(
    ("url", "options", "topics"),
    [
        ("redis://127.0.0.1:6379/0", {}, ["/0.celeryev/*"]),
        ("redis://127.0.0.1:6379/7", {}, ["/7.celeryev/*"]),
        ("redis://127.0.0.1:6379/2", {"fanout_patterns": False}, ["/2.celeryev"]),
        ("redis://127.0.0.1:6379/2", {"fanout_prefix": False}, ["celeryev/*"]),
        ("redis://127.0.0.1:6379/2", {"fanout_prefix": "app:"}, ["app:celeryev/*"]),
        ("redis://127.0.0.1:6379/3", {"global_keyprefix": "tenant_"}, ["tenant_/3.celeryev/*"]),
    ],
)
@pytest.mark.integration
def test_topics_are_kombus(url: str, options: dict[str, object], topics: list[str]) -> None:
    assert subscribe_topics(_channel(url, **options)) == topics


@pytest.mark.integration
def test_topics_match_what_kombu_publishes_to() -> None:
    channel = _channel("redis://127.0.0.1:6379/5")
    published = channel._get_publish_topic("celeryev", "task.multi")
    assert published == "/5.celeryev/task.multi"
    assert subscribe_topics(channel) == ["/5.celeryev/*"]


def test_only_redis_urls_take_the_fast_path() -> None:
    assert is_redis_url(Connection("redis://h/0"))
    assert is_redis_url(Connection("rediss://h/0"))
    assert not is_redis_url(Connection("amqp://g:g@h//"))
    assert not is_redis_url(Connection("filesystem://"))


def _envelope(body: bytes, **extra: object) -> bytes:
    envelope: dict[str, object] = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": "celery@a"},
        "properties": {"body_encoding": "base64", "delivery_tag": "x", "delivery_mode": 1},
    }
    envelope.update(extra)
    return json.dumps(envelope).encode()


def test_envelope_base64_body() -> None:
    assert open_envelope(_envelope(b'[{"type": "x"}]')) == ("application/json", b'[{"type": "x"}]')


def test_envelope_plain_body_and_other_content_type() -> None:
    raw = json.dumps({"body": "hello", "content-type": "text/plain", "properties": {}})
    assert open_envelope(raw) == ("text/plain", "hello")


@pytest.mark.parametrize(
    "raw",
    [
        b"[1, 2]",
        b"{}",
        b'{"body": 3, "properties": {}}',
        b'{"body": "x", "properties": {"body_encoding": "rot13"}}',
    ],
)
def test_bad_envelopes_raise(raw: bytes) -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        open_envelope(raw)


def test_base64_is_as_lenient_as_kombus() -> None:
    assert b64decode("aGVsbG8=") == base64.b64decode("aGVsbG8=")
    assert b64decode("aGVs\nbG8=") == base64.b64decode("aGVs\nbG8=") == b"hello"


def test_enveloped_messages_are_counted_and_bad_ones_rejected() -> None:
    state = build_state(Config())
    decoder = Decoder(state, IntakeBacklog())
    events = [
        {"type": "task-received", "hostname": "celery@a", "uuid": "u1", "name": "t.a"},
        {"type": "task-succeeded", "hostname": "celery@a", "uuid": "u1", "runtime": 0.5},
    ]
    for raw in (_envelope(orjson.dumps(events)), b"not json", _envelope(b"{nope")):
        decoder.handle(RawMessage(1.0, None, raw, enveloped=True))
    snapshot = state.snapshot(1.0)
    assert snapshot.task_counts["task-received"] == {("t.a", "celery@a"): 1}
    assert snapshot.task_counts["task-succeeded"] == {("t.a", "celery@a"): 1}
    assert snapshot.rejected == {"invalid_envelope": 1, "invalid_json": 1}


def test_buffered_recv_serves_exact_sizes_from_one_read() -> None:
    reads: list[int] = []
    chunks = [b"abcdefghij", b"", b"never"]

    def recv(n: int) -> bytes:
        reads.append(n)
        return chunks.pop(0)

    buffered = BufferedRecv(recv)
    assert [buffered(3), buffered(3), buffered(10), buffered(5)] == [b"abc", b"def", b"ghij", b""]
    assert len(reads) == 2  # one read for the data, one that saw the end


@pytest.mark.parametrize(
    ("url", "redis"),
    [
        ("redis://h:6379/0", True),
        ("rediss://h:6380/0", True),
        ("sentinel://h:26379", True),
        ("redis+socket:///run/redis.sock", True),
        ("amqp://guest:guest@h:5672//", False),
        ("amqps://guest:guest@h:5671//", False),
        ("memory://", False),
    ],
)
def test_redis_readers_get_socket_timeouts_the_user_may_override(url: str, redis: bool) -> None:
    """kombu's path on Redis times its connections out (a frozen server would hold them for
    good); a timeout given as a transport option wins; other brokers get nothing added."""
    assert is_redis_broker(url) is redis
    added = {"socket_connect_timeout": 5.0} if redis else {}
    connection = intake_connection(url, {"socket_timeout": 1.5})
    assert connection.transport_options == {"socket_timeout": 1.5, **added}
