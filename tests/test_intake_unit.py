"""Pure logic of the fast intake paths: kombu's topics, envelopes, buffered reads."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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


def _envelope_in_full(raw: bytes | str) -> tuple[str | None, bytes | str]:
    """``open_envelope`` as it read every envelope before it read kombu's own without their
    headers: the reference."""
    envelope = orjson.loads(raw)
    if type(envelope) is not dict:
        raise TypeError(f"envelope is a {type(envelope).__name__}")
    body = envelope["body"]
    properties = envelope.get("properties") or {}
    if type(properties) is not dict:
        raise TypeError(f"properties is a {type(properties).__name__}")
    encoding = properties.get("body_encoding")
    if encoding == "base64":
        body = b64decode(body)
    elif encoding is not None:
        raise ValueError(f"unknown body_encoding {encoding!r}")
    if not isinstance(body, (str, bytes)):
        raise TypeError(f"body is a {type(body).__name__}")
    content_type = envelope.get("content-type")
    return (content_type if isinstance(content_type, str) else None), body


def _outcome(opener: Any, raw: bytes | str) -> tuple[str, Any]:
    try:
        return "opened", opener(raw)
    except Exception as exc:
        return "raised", type(exc)


json_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=4)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)
)
base64_texts = st.binary(max_size=12).map(lambda data: base64.b64encode(data).decode())


def _mostly(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A plausible value five times in six, else any JSON value."""
    return st.integers(0, 5).flatmap(lambda choice: plausible if choice < 5 else json_values)


envelopes = st.fixed_dictionaries(
    {"body": _mostly(base64_texts | st.text(max_size=8))},
    optional={
        "content-encoding": st.just("utf-8"),
        "content-type": _mostly(st.sampled_from(["application/json", "text/plain"])),
        "headers": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
        "properties": _mostly(
            st.fixed_dictionaries(
                {},
                optional={
                    "body_encoding": _mostly(st.sampled_from(["base64", "rot13"])),
                    "delivery_tag": st.text(max_size=3),
                },
            )
        ),
    },
)
"""Envelopes as kombu writes them, mostly; and any field missing or of another type."""


@settings(max_examples=500, deadline=None)
@given(envelope=_mostly(envelopes), ensure_ascii=st.booleans(), as_bytes=st.booleans())
def test_an_envelope_opens_as_read_in_full(
    envelope: Any, ensure_ascii: bool, as_bytes: bool
) -> None:
    """Kombu's own envelopes are read without their headers; any other (non-ASCII, fields of
    other types, not JSON) in full: either way it opens, or is refused, as before."""
    text = json.dumps(envelope, ensure_ascii=ensure_ascii)
    raw = text.encode() if as_bytes else text
    assert _outcome(open_envelope, raw) == _outcome(_envelope_in_full, raw)


@pytest.mark.parametrize(
    "raw",
    [
        _envelope(b"[]")[:-1] + ', "x": "hôte"}'.encode(),  # non-ASCII: read in full
        _envelope(b"[]")[:-1] + b', "x": "\xff"}',  # invalid UTF-8: refused by the full read
        _envelope(b"[]")[:-1] + b', "x": NaN}',
        _envelope(b"[]")[:-1] + b', "x": ' + b"[" * 1010 + b"]" * 1010 + b"}",
    ],
)
def test_an_envelope_the_schema_leaves_is_opened_or_refused_in_full(raw: bytes) -> None:
    assert _outcome(open_envelope, raw) == _outcome(_envelope_in_full, raw)


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
