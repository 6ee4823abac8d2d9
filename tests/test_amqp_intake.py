"""The AMQP fast path: its frame parser against frames py-amqp itself writes and hand-made ones,
the choice of intake path, and recovery when RabbitMQ closes the exporter's connection."""

from __future__ import annotations

import queue
import random
import socket
import struct
import subprocess
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from amqp import Message
from amqp.method_framing import frame_writer
from amqp.serialization import dumps

from celery_events_exporter.intake import make_reader
from celery_events_exporter.intake.amqp import (
    HEARTBEAT_FRAME,
    AmqpPath,
    FrameError,
    FrameParser,
    ServerClosed,
    connection_close_frame,
    method_frame,
)
from celery_events_exporter.intake.kombu_reader import KombuPath
from celery_events_exporter.intake.message import RawMessage
from celery_events_exporter.intake.reader import Subscription
from celery_events_exporter.intake.redis import RedisPubSubPath
from celery_events_exporter.intake.status import BrokerStatus
from tests.conftest import Processes, client, require_tool, wait_until

FRAME_MAX = 4096


def py_amqp_frames(channel: int, method: tuple[int, int], argsig: str, args: tuple[Any, ...],
                   message: Message | None = None) -> bytes:  # fmt: skip
    """What py-amqp's own frame writer puts on the wire for this method (and content), with
    ``FRAME_MAX`` as the negotiated frame size."""
    written: list[bytes] = []
    connection = SimpleNamespace(frame_max=FRAME_MAX, bytes_sent=0)
    transport = SimpleNamespace(write=lambda data: written.append(bytes(data)))
    write = frame_writer(connection, transport)
    write(1, channel, method, dumps(argsig, args), message)
    return b"".join(written)


def deliver(body: bytes, content_type: str | None = "application/json", tag: int = 1,
            channel: int = 1) -> bytes:  # fmt: skip
    properties = {"content_type": content_type} if content_type is not None else {}
    return py_amqp_frames(
        channel,
        (60, 60),
        "sLbss",
        ("ctag", tag, False, "celeryev", "task.multi"),
        Message(body, content_encoding="utf-8", delivery_mode=1, **properties),
    )


def parse(
    stream: bytes, chunk_sizes: list[int] | None = None, capacity: int = 1 << 20
) -> list[RawMessage]:
    got: list[RawMessage] = []
    parser = FrameParser(got.append, capacity=capacity)
    if chunk_sizes is None:
        parser.feed(stream, 1.0)
    else:
        pos = 0
        for size in chunk_sizes:
            parser.feed(stream[pos : pos + size], 1.0)
            pos += size
        parser.feed(stream[pos:], 1.0)
    assert parser.pending == 0
    return got


BODIES = [
    b'{"type": "worker-heartbeat", "hostname": "celery@a"}',
    b"[" + b",".join([b'{"type": "task-started", "uuid": "%d"}' % i for i in range(400)]) + b"]",
    '["caf\u00e9"]'.encode(),
]


def stream_of_deliveries() -> bytes:
    return b"".join(deliver(body, tag=i) for i, body in enumerate(BODIES, 1))


def test_deliveries_written_by_py_amqp_are_parsed_exactly() -> None:
    assert len(BODIES[1]) > 3 * FRAME_MAX  # a body split over several body frames
    got = parse(stream_of_deliveries())
    assert [(m.content_type, m.body) for m in got] == [("application/json", b) for b in BODIES]
    assert all(m.received_at == 1.0 and not m.enveloped for m in got)


@pytest.mark.parametrize("seed", range(5))
def test_any_split_of_the_stream_gives_the_same_messages(seed: int) -> None:
    stream = stream_of_deliveries()
    rng = random.Random(seed)
    sizes = [rng.choice([1, 2, 7, 8, 9, 100, 4103]) for _ in range(len(stream) // 50)]
    got = parse(stream, sizes)
    assert [m.body for m in got] == BODIES
    one_by_one = parse(stream, [1] * len(stream))
    assert [m.body for m in one_by_one] == BODIES
    # A buffer smaller than a frame grows to hold it; leftovers move to its front.
    assert [m.body for m in parse(stream, sizes, capacity=16)] == BODIES


def test_receive_reads_a_socket_into_the_buffer() -> None:
    reader_end, server = socket.socketpair()
    got: list[RawMessage] = []
    parser = FrameParser(got.append, capacity=1000)
    stream = stream_of_deliveries()
    server.sendall(stream)
    server.close()
    received = 0
    while n := parser.receive(reader_end):
        received += n
    reader_end.close()
    assert received == len(stream)
    assert [m.body for m in got] == BODIES
    assert parser.pending == 0


def test_heartbeats_other_channels_and_unknown_methods_are_skipped() -> None:
    blocked = method_frame(0, (10, 60), b"\x03low")  # connection.blocked
    stream = (
        HEARTBEAT_FRAME
        + deliver(b'{"a": 1}')
        + blocked
        + HEARTBEAT_FRAME
        + deliver(b'{"other": 1}', channel=2)
        + deliver(b'{"b": 2}', content_type=None)
    )
    got = parse(stream)
    assert [(m.content_type, m.body) for m in got] == [
        ("application/json", b'{"a": 1}'),
        (None, b'{"b": 2}'),
    ]


def test_other_content_types_and_empty_bodies_are_passed_on() -> None:
    got = parse(deliver(b"", content_type="text/plain") + deliver(b"x", content_type="a/b"))
    assert [(m.content_type, m.body) for m in got] == [("text/plain", b""), ("a/b", b"x")]


def test_connection_close_from_the_server() -> None:
    close = py_amqp_frames(0, (10, 50), "BsBB", (320, "CONNECTION_FORCED - closed via mgmt", 0, 0))
    got: list[RawMessage] = []
    parser = FrameParser(got.append)
    with pytest.raises(ServerClosed) as raised:
        parser.feed(deliver(b'{"a": 1}') + close, 1.0)
    assert [m.body for m in got] == [b'{"a": 1}']  # what came before the close still counts
    assert raised.value.code == 320
    assert str(raised.value) == (
        "connection closed by the server: 320 CONNECTION_FORCED - closed via mgmt"
    )
    assert raised.value.reply == b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x33\xce"
    assert isinstance(raised.value, ConnectionError)


def test_channel_close_and_consumer_cancel_from_the_server() -> None:
    close = py_amqp_frames(1, (20, 40), "BsBB", (404, "NOT_FOUND - no queue", 50, 10))
    with pytest.raises(ServerClosed, match="channel closed by the server: 404 NOT_FOUND") as raised:
        FrameParser(lambda m: None).feed(close, 1.0)
    assert raised.value.reply == method_frame(1, (20, 41))
    cancel = py_amqp_frames(1, (60, 30), "sb", ("ctag", False))
    with pytest.raises(ServerClosed, match="consumer cancelled"):
        FrameParser(lambda m: None).feed(cancel, 1.0)


@pytest.mark.parametrize(
    "stream",
    [
        deliver(b"{}")[:-1] + b"\x00",  # wrong frame end
        deliver(b"{}")[deliver(b"{}").index(b"\x02\x00\x01") :],  # header without deliver
        struct.pack(">BHI", 3, 1, 2) + b"{}\xce",  # body outside a message
        struct.pack(">BHI", 9, 0, 0) + b"\xce",  # unknown frame type
    ],
    ids=["frame-end", "header-alone", "body-alone", "frame-type"],
)
def test_malformed_streams_raise(stream: bytes) -> None:
    with pytest.raises(FrameError):
        FrameParser(lambda m: None).feed(stream, 1.0)


def test_our_close_frame_is_what_py_amqp_writes() -> None:
    expected = py_amqp_frames(0, (10, 50), "BsBB", (200, "exporter stopping", 0, 0))
    assert connection_close_frame() == expected


@pytest.mark.parametrize(
    ("url", "options", "reader"),
    [
        ("amqp://guest:guest@h:5672//", {}, AmqpPath),
        ("pyamqp://guest:guest@h:5672/v", {}, AmqpPath),
        ("amqps://guest:guest@h:5671//", {}, KombuPath),
        ("amqp://guest:guest@h:5672//", {"exporter_fast_path": False}, KombuPath),
        ("redis://h:6379/0", {}, RedisPubSubPath),
        ("redis://h:6379/0", {"exporter_fast_path": False}, KombuPath),
        ("filesystem://", {}, KombuPath),
    ],
)
def test_make_reader_chooses_the_path(url: str, options: dict[str, Any], reader: type) -> None:
    chosen = make_reader(url, options, queue.SimpleQueue(), BrokerStatus())
    assert type(chosen.path) is reader
    assert "exporter_fast_path" not in chosen.path.subscription.transport_options


# -- the reader loop on a socket pair ---------------------------------------------------------


def _reader(outbox: queue.SimpleQueue[RawMessage]) -> AmqpPath:
    return AmqpPath(Subscription("amqp://guest:guest@127.0.0.1:1//", {}, outbox))


def test_reader_sends_heartbeats_and_gives_up_on_a_silent_server() -> None:
    client_sock, server = socket.socketpair()
    outbox: queue.SimpleQueue[RawMessage] = queue.SimpleQueue()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _reader(outbox)._read(threading.Event(), client_sock, 1.0, FrameParser(outbox.put))
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run)
    thread.start()
    server.sendall(deliver(b'{"x": 1}'))
    server.settimeout(5)
    assert server.recv(64) == HEARTBEAT_FRAME  # at once: none was sent yet
    assert server.recv(64) == HEARTBEAT_FRAME  # then every half interval
    assert 0.4 < time.monotonic() - started < 1.5
    thread.join(10)
    silent_for = time.monotonic() - started
    assert [type(e) for e in errors] == [ConnectionError]
    assert str(errors[0]) == "no frame from the server for 2 s"
    assert 2.0 < silent_for < 4.5
    assert outbox.get_nowait().body == b'{"x": 1}'
    client_sock.close()
    server.close()


def test_reader_stops_with_a_connection_close() -> None:
    client_sock, server = socket.socketpair()
    stop = threading.Event()
    outbox: queue.SimpleQueue[RawMessage] = queue.SimpleQueue()
    thread = threading.Thread(
        target=_reader(outbox)._read, args=(stop, client_sock, 0.0, FrameParser(outbox.put))
    )
    thread.start()
    server.sendall(b"".join(deliver(b"[%d]" % i) for i in range(100)))
    wait_until(lambda: outbox.qsize() == 100, timeout=5, what="100 deliveries queued")
    stop.set()
    thread.join(5)
    server.settimeout(5)
    assert server.recv(4096) == connection_close_frame()  # no heartbeat: none negotiated
    assert [outbox.get_nowait().body for _ in range(100)] == [b"[%d]" % i for i in range(100)]
    client_sock.close()
    server.close()


# -- against the machine's RabbitMQ -----------------------------------------------------------

WORKER = "survivor@amqp-close"


def _exporter_connection(rabbitmqctl: str, vhost: str) -> str:
    """The pid of the connection that consumes the exporter's event queue."""

    def rows(*args: str) -> list[list[str]]:
        out = subprocess.run(
            [rabbitmqctl, "-q", *args], check=True, capture_output=True, text=True
        ).stdout
        return [line.split("\t") for line in out.splitlines() if line.strip()]

    channels = [
        channel
        for name, channel in rows("list_consumers", "-p", vhost, "queue_name", "channel_pid")
        if name.startswith("celeryev.celery-events-exporter.")
    ]
    assert len(channels) == 1, f"exporter consumers in {vhost}: {channels}"
    connections = [conn for pid, conn in rows("list_channels", "pid", "connection")
                   if pid == channels[0]]  # fmt: skip
    assert len(connections) == 1
    return connections[0]


def test_connection_closed_by_rabbitmq_is_recovered(amqp_url: str, processes: Processes) -> None:
    rabbitmqctl = require_tool("rabbitmqctl")
    vhost = amqp_url.rsplit("/", 1)[1]
    exporter = processes.exporter(amqp_url)
    processes.worker(amqp_url, WORKER)

    def succeeded() -> float | None:
        return exporter.metrics().get(
            "celery_task_succeeded_total", task="tests.add", worker=WORKER
        )

    with client(amqp_url) as app:
        for i in range(3):
            app.send_task("tests.add", (i, i))
    wait_until(lambda: succeeded() == 3.0, what="3 successes before the connection is closed")

    connection = _exporter_connection(rabbitmqctl, vhost)
    closed_at = time.monotonic()
    subprocess.run(
        [rabbitmqctl, "close_connection", connection, "test"], check=True, capture_output=True
    )
    wait_until(
        lambda: (
            (exporter.metrics().total("celery_exporter_broker_connection_errors_total") or 0) >= 1
        ),
        what="the closed connection to be reported",
    )
    assert succeeded() == 3.0  # nothing counted is lost
    wait_until(
        lambda: (
            exporter.metrics().get("celery_exporter_broker_connected") == 1.0
            and len(_consumers(rabbitmqctl, vhost)) == 1
        ),
        timeout=40,
        interval=0.05,
        what="the exporter to reconnect and consume again",
    )
    # A lost connection is retried at once (0.25-0.5 s), not after a grown backoff.
    assert time.monotonic() - closed_at < 5.0
    assert exporter.metrics().get("celery_exporter_broker_connections_lost_total") == 1.0
    with client(amqp_url) as app:
        for i in range(2):
            app.send_task("tests.add", (i, 10))
    wait_until(lambda: succeeded() == 5.0, timeout=60, what="2 more successes after reconnecting")
    log = exporter.log()
    assert "broker connection lost" in log
    assert "connection closed by the server: 320 CONNECTION_FORCED" in log
    assert (
        '"logger": "celery_events_exporter.intake.amqp"' in log
    )  # it was the fast path that recovered
    assert exporter.stop() == 0


def _consumers(rabbitmqctl: str, vhost: str) -> list[str]:
    out = subprocess.run(
        [rabbitmqctl, "-q", "list_consumers", "-p", vhost, "queue_name"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [q for q in out.split() if q.startswith("celeryev.celery-events-exporter.")]
