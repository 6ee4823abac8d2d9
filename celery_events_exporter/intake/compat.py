"""Every touch of kombu's, redis-py's and py-amqp's private attributes, fenced in one module.

The intake paths need things those libraries do not publish: kombu's own rule for the Redis
pub/sub topics of a fanout queue, redis-py's socket, py-amqp's raw socket read and its read
buffer (the fast paths); redis-py's pub/sub health check, kombu's subscriber connection and its
list of auto-delete queues (kombu's path on Redis, which must notice a frozen server); the
controller, the message kombu's consumers decode (the size of an inspect reply). The
benchmark's publisher needs kombu's fanout publish and topics and py-amqp's raw write. Each
function below is the only place one of them is touched, and each has a test in
``tests/test_compat.py`` that fails loudly, naming the attribute, when an upgrade changes it.
``pyproject.toml`` pins kombu, py-amqp and redis-py to the releases those tests cover: widen a pin
only after the tests pass on the new release.

Nothing else in the exporter or the benchmark may touch a private attribute of these libraries.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

FANOUT_ROUTING_KEY = "#"
"""The routing key Celery's EventReceiver binds with: every event type."""


class CompatError(RuntimeError):
    """A private attribute the exporter relies on is missing or changed shape: the installed
    kombu, redis-py or py-amqp is one ``tests/test_compat.py`` has not covered."""


def redis_subscribe_topics(channel: Any, exchange: str) -> list[str]:
    """The pub/sub patterns kombu's Redis ``channel`` PSUBSCRIBEs for a queue bound to the fanout
    ``exchange`` with routing key ``#``, global key prefix included.

    kombu keeps a fanout binding in ``Channel._fanout_queues`` as (exchange, routing key with
    ``#`` turned into ``*``) and derives the topics with ``Channel._get_subscribe_topics`` from it
    and the channel's options (``fanout_prefix``, ``fanout_patterns``, the db number, sentinel's
    legacy topic); its pub/sub client then prefixes every PSUBSCRIBE argument with
    ``global_keyprefix``. A binding is registered for the call only and removed after it.
    """
    fanout_queues = getattr(channel, "_fanout_queues", None)
    get_topics = getattr(channel, "_get_subscribe_topics", None)
    if not isinstance(fanout_queues, dict) or not callable(get_topics):
        raise CompatError(
            "kombu's Redis Channel has no _fanout_queues dict or _get_subscribe_topics method"
        )
    marker = f"celery-events-exporter.topics.{id(channel)}"
    fanout_queues[marker] = (exchange, FANOUT_ROUTING_KEY.replace("#", "*"))
    try:
        topics = get_topics(marker)
    finally:
        del fanout_queues[marker]
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise CompatError(f"kombu's _get_subscribe_topics returned {topics!r}, not a list of str")
    prefix: str = channel.global_keyprefix or ""
    return [prefix + topic for topic in topics]


def redis_socket(connection: Any) -> socket.socket:
    """The connected socket of a redis-py ``Connection`` (``Connection._sock``), which the Redis
    fast path reads itself instead of going through redis-py's parser."""
    sock = getattr(connection, "_sock", None)
    if not isinstance(sock, socket.socket):
        raise CompatError(f"redis-py Connection._sock is {type(sock).__name__}, not a socket")
    return sock


def is_py_amqp_tcp_transport(transport: Any) -> bool:
    """py-amqp's plain-TCP transport, the one whose socket reads the exporter may take over."""
    return type(transport).__name__ == "TCPTransport" and isinstance(
        getattr(transport, "sock", None), socket.socket
    )


def py_amqp_read_buffer(transport: Any) -> bytes:
    """Bytes py-amqp's transport has read off the socket but not parsed yet
    (``_AbstractTransport._read_buffer``): they come before anything the fast path reads."""
    buffer = getattr(transport, "_read_buffer", None)
    if not isinstance(buffer, (bytes, bytearray, memoryview)):
        raise CompatError(f"py-amqp transport _read_buffer is {type(buffer).__name__}, not bytes")
    return bytes(buffer)


def replace_py_amqp_recv(
    transport: Any, wrap: Callable[[Callable[[int], bytes]], Callable[[int], bytes]]
) -> None:
    """Replace py-amqp's ``TCPTransport._quick_recv`` (the ``recv`` it reads every frame with)
    by ``wrap(original)``."""
    original = getattr(transport, "_quick_recv", None)
    if not callable(original):
        raise CompatError("py-amqp TCPTransport has no callable _quick_recv")
    transport._quick_recv = wrap(original)


def _kombu_redis_pubsub(channel: Any) -> Any:
    """The redis-py ``PubSub`` kombu's Redis ``channel`` consumes fanout queues with (its
    ``subclient``, a cached property: None until kombu first subscribes)."""
    namespace = getattr(channel, "__dict__", None)
    if not isinstance(namespace, dict) or not hasattr(type(channel), "subclient"):
        raise CompatError("kombu's Redis Channel has no cached subclient property")
    return namespace.get("subclient")


def _health_check_counter(pubsub: Any) -> int:
    counter = getattr(pubsub, "health_check_response_counter", None)
    if not isinstance(counter, int):
        raise CompatError(
            f"redis-py PubSub.health_check_response_counter is {type(counter).__name__}, not int"
        )
    return counter


def redis_pubsub_ping(channel: Any) -> bool:
    """PING the server on the pub/sub connection of kombu's Redis ``channel``, as redis-py's own
    ``PubSub.check_health`` does: with ``PubSub.HEALTH_CHECK_MESSAGE`` as the payload and one
    more in ``health_check_response_counter``, so that the PONG, read by kombu amid the
    messages, is swallowed by redis-py and taken off the counter. False (nothing sent) while
    kombu has not subscribed yet."""
    pubsub = _kombu_redis_pubsub(channel)
    connection = getattr(pubsub, "connection", None)
    if connection is None:
        return False
    message = getattr(pubsub, "HEALTH_CHECK_MESSAGE", None)
    if not isinstance(message, str):
        raise CompatError("redis-py PubSub has no HEALTH_CHECK_MESSAGE string")
    counter = _health_check_counter(pubsub)
    connection.send_command("PING", message, check_health=False)
    pubsub.health_check_response_counter = counter + 1
    return True


def redis_pubsub_unanswered_pings(channel: Any) -> int:
    """Health-check PINGs sent on the pub/sub connection of kombu's Redis ``channel`` whose PONG
    has not been read yet (redis-py's ``PubSub.health_check_response_counter``)."""
    pubsub = _kombu_redis_pubsub(channel)
    return 0 if pubsub is None else _health_check_counter(pubsub)


def kombu_forget_auto_delete(channel: Any) -> None:
    """Make kombu's virtual ``channel`` forget which of its queues are auto-delete
    (``Channel.auto_delete_queues``): closing it then deletes none of them, so a channel whose
    server stopped answering closes without a command that could only time out (on Redis, a
    SREM and a pipeline, each retried by redis-py). Only for a channel being given up."""
    queues = getattr(channel, "auto_delete_queues", None)
    if not isinstance(queues, set):
        raise CompatError(f"kombu Channel.auto_delete_queues is {type(queues).__name__}, not a set")
    queues.clear()


def bound_message_bodies(channel: Any, limit: int, stand_in: bytes) -> None:
    """Make kombu's ``channel`` hand its consumers ``stand_in`` (JSON) in place of the body of
    any message over ``limit`` bytes, before a consumer decodes it: kombu's ``Consumer`` makes
    each delivery a ``Message`` through ``channel.message_to_python`` (replaced on this channel
    only) and decodes ``Message.body`` after that. What the transport read of the message
    (its bytes, and on Redis the base64 envelope) is not bounded here: only the decoding."""
    to_python = getattr(channel, "message_to_python", None)
    if not callable(to_python):
        raise CompatError("kombu's Channel has no callable message_to_python")

    def bounded(raw: Any) -> Any:
        message = to_python(raw)
        body = getattr(message, "body", None)
        if not isinstance(body, (bytes, str)):
            raise CompatError(f"kombu Message.body is {type(body).__name__}, not bytes or str")
        if len(body) > limit:
            message.body = stand_in
            message.content_type = "application/json"
            message.content_encoding = "utf-8"
        return message

    channel.message_to_python = bounded


def redis_pubsub_socket(channel: Any) -> socket.socket | None:
    """The socket of the pub/sub connection of kombu's Redis ``channel`` (redis-py's
    ``Connection._sock``), None while it is not connected."""
    pubsub = _kombu_redis_pubsub(channel)
    connection = getattr(pubsub, "connection", None)
    if connection is None or getattr(connection, "_sock", None) is None:
        return None
    return redis_socket(connection)


# -- the benchmark's publisher (bench/publisher.py) -------------------------------------------
# It must put kombu's own bytes on the wire at a rate no consumer keeps up with, so it captures
# what kombu and py-amqp would send and writes it later in large batches.


def redis_stage_fanout(channel: Any, stage: Callable[..., None]) -> None:
    """Have kombu's Redis ``channel`` hand each fanout publish to ``stage(exchange, message,
    routing_key, **kwargs)`` instead of PUBLISHing it: ``Channel._put_fanout``, which kombu's
    fanout exchange delivers through, replaced on this channel only."""
    if not callable(getattr(channel, "_put_fanout", None)):
        raise CompatError("kombu's Redis Channel has no callable _put_fanout")
    channel._put_fanout = stage


def redis_publish_topics(channel: Any, exchange: str, routing_key: str) -> list[str]:
    """The pub/sub topics kombu's Redis ``channel`` PUBLISHes a fanout message to
    (``Channel._get_publish_topics``), before its client prepends ``global_keyprefix``."""
    get_topics = getattr(channel, "_get_publish_topics", None)
    if not callable(get_topics):
        raise CompatError("kombu's Redis Channel has no callable _get_publish_topics")
    topics = get_topics(exchange, routing_key)
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise CompatError(f"kombu's _get_publish_topics returned {topics!r}, not a list of str")
    return topics


@contextmanager
def py_amqp_captured_writes(transport: Any) -> Iterator[list[bytes]]:
    """Yields the list of everything py-amqp's ``transport`` is asked to write while the block
    runs, kept instead of sent: ``_AbstractTransport._write``, which ``write`` and so every
    frame goes through, replaced for the block. Each piece is copied: py-amqp reuses its
    buffer."""
    original = getattr(transport, "_write", None)
    if not callable(original):
        raise CompatError("py-amqp transport has no callable _write")
    writes: list[bytes] = []
    transport._write = lambda data: writes.append(bytes(data))
    try:
        yield writes
    finally:
        transport._write = original
