"""A hostile or misconfigured RabbitMQ management endpoint (issue 20), against the real exporter
on a real RabbitMQ: real HTTP servers of the test answer a 302 to another host (which records
any Authorization header it gets) and a 300 MB body. The credentials never leave for the other
host, the body is not read past its cap, and the failures are counted."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from celery_events_exporter.queues.management import ManagementApi, ManagementError
from testkit.ports import free_port
from tests.conftest import ExporterProcess, Processes, wait_until

PASSWORD = "mgmt-s3cret"
HUGE = 300 * 1024 * 1024
TRICKLE_EVERY = 0.1
TRICKLE_BYTES = 10_000
POLL_TIMEOUT = 1.0
"""The client's deadline: the exporter's is min(5 s, --queue-poll-interval)."""


class Endpoint:
    """The management URL's server: ``mode`` says what it answers."""

    def __init__(self, other: str) -> None:
        self.mode = "redirect"
        self.other = other
        self.requests = 0
        self.bytes_sent = 0
        self.cut_after: list[float] = []
        """Seconds from each trickled request to the client's hang-up."""


def serve(host: str, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, free_port()), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[tuple[Endpoint, list[str | None], str]]:
    """(the endpoint, the Authorization headers the other host got, the endpoint's URL)."""
    received: list[str | None] = []

    class Other(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args: object) -> None: ...

    other = serve("127.0.0.2", Other)  # another host: a second loopback address
    endpoint = Endpoint(f"http://127.0.0.2:{other.server_address[1]}")

    class Management(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            endpoint.requests += 1
            if endpoint.mode == "redirect":
                self.send_response(302)
                self.send_header("Location", endpoint.other + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if endpoint.mode == "ok":
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"[]")
                return
            if endpoint.mode.startswith("trickle"):
                self.trickle()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(HUGE))
            self.end_headers()
            chunk = b"[" + b" " * (1024 * 1024 - 1)
            try:
                for _ in range(HUGE // len(chunk)):
                    self.wfile.write(chunk)
                    endpoint.bytes_sent += len(chunk)
                    chunk = b" " * len(chunk)
            except OSError:
                return  # the exporter hung up: what it should do

        def trickle(self) -> None:
            """A byte every ``TRICKLE_EVERY`` seconds, well within any socket timeout: of the
            status line and headers, or (headers sent at once) of a listing's body."""
            started = time.monotonic()
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            head += b"Content-Length: %d\r\n\r\n" % TRICKLE_BYTES
            if endpoint.mode == "trickle-body":
                self.wfile.write(head)
                head = b""
            try:
                for byte in (
                    [head[i : i + 1] for i in range(len(head))]
                    + [b"["]
                    + [b" "] * (TRICKLE_BYTES - 1)
                ):
                    self.wfile.write(byte)
                    self.wfile.flush()
                    time.sleep(TRICKLE_EVERY)
                    # A hang-up shows once the peer's reset comes back: probe without waiting.
                    self.connection.setblocking(False)
                    try:
                        if self.connection.recv(1, socket.MSG_PEEK) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        pass
                    finally:
                        self.connection.setblocking(True)
            except OSError:
                endpoint.cut_after.append(time.monotonic() - started)

        def log_message(self, *args: object) -> None: ...

    management = serve("127.0.0.1", Management)
    yield endpoint, received, f"http://127.0.0.1:{management.server_address[1]}"
    management.shutdown()
    other.shutdown()


def management_errors(exporter: ExporterProcess) -> float:
    metrics = exporter.metrics("celery_exporter_queue_poll_errors")
    return metrics.get("celery_exporter_queue_poll_errors_total", reason="management") or 0.0


ExporterPolling = Callable[[float], ExporterProcess]
"""Starts an exporter that polls the management API every so many seconds."""


@pytest.fixture
def exporter_polling(
    amqp_url: str,
    processes: Processes,
    tmp_path: Path,
    servers: tuple[Endpoint, list[str | None], str],
) -> ExporterPolling:
    """An exporter on a real RabbitMQ watching queue ``work``, whose management API is the
    ``servers`` endpoint, with credentials (from a file, as operators give them) that must never
    leave for another host."""
    credentials = tmp_path / "credentials"
    credentials.write_text(f"monitor:{PASSWORD}\n")

    def start(poll_interval: float) -> ExporterProcess:
        return processes.exporter(
            amqp_url,
            "--queue", "work",
            "--rabbitmq-management-url", servers[2],
            "--rabbitmq-management-credentials-file", str(credentials),
            "--queue-poll-interval", str(poll_interval),
        )  # fmt: skip

    return start


def peak_rss_bytes(exporter: ExporterProcess) -> int:
    for line in Path(f"/proc/{exporter.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_credentials_never_follow_a_redirect_and_a_huge_body_is_not_read(
    servers: tuple[Endpoint, list[str | None], str], exporter_polling: ExporterPolling
) -> None:
    endpoint, received, _ = servers
    exporter = exporter_polling(0.5)
    wait_until(lambda: management_errors(exporter) >= 3, what="three refused redirects")
    assert endpoint.requests >= 3
    assert received == []  # the other host never heard from the exporter, credentials or not
    assert "not followed" in exporter.log()
    assert PASSWORD not in exporter.log()
    # The readings without the management API stand.
    assert exporter.metrics().get("celery_queue_length", queue="work") == 0.0

    endpoint.mode = "huge"
    errors = management_errors(exporter)
    wait_until(lambda: management_errors(exporter) >= errors + 3, what="three huge answers cut")
    assert "over 16 MiB" in exporter.log()
    # Each answer was dropped at the cap: the server got to send a few MiB more at most (the
    # sockets' buffers), never its 300 MB.
    assert endpoint.bytes_sent < 3 * 64 * 1024 * 1024
    assert peak_rss_bytes(exporter) < 200 * 1024 * 1024
    assert exporter.proc.poll() is None


@pytest.mark.parametrize("mode", ["trickle-headers", "trickle-body"])
def test_a_trickling_answer_is_cut_at_the_deadline(
    mode: str, servers: tuple[Endpoint, list[str | None], str]
) -> None:
    """The client's own call, against a real server: a byte every 0.1 s, each read well within
    the socket timeout, read before for 10 000 bytes (1 000 s) or for ever; cut at the
    deadline now, the cause named."""
    endpoint, _, url = servers
    endpoint.mode = mode
    api = ManagementApi(url, "/", ("monitor", PASSWORD), timeout=POLL_TIMEOUT)
    started = time.monotonic()
    with pytest.raises(ManagementError) as raised:
        api.queues()
    took = time.monotonic() - started
    assert str(raised.value) == (
        "management API answer took longer than the poll's timeout (1 s): cut"
    )
    assert POLL_TIMEOUT <= took < POLL_TIMEOUT + 0.25
    wait_until(lambda: len(endpoint.cut_after) == 1, what="the server sees the hang-up")
    assert POLL_TIMEOUT <= endpoint.cut_after[0] < POLL_TIMEOUT + 0.5


def test_the_exporter_cuts_a_trickling_management_api_at_the_poll_timeout(
    servers: tuple[Endpoint, list[str | None], str], exporter_polling: ExporterPolling
) -> None:
    endpoint, received, _ = servers
    endpoint.mode = "trickle-body"
    exporter = exporter_polling(POLL_TIMEOUT)  # the poll's timeout: min(5 s, interval)
    wait_until(lambda: management_errors(exporter) >= 3, timeout=20, what="three cut answers")
    # The server answers at once from now: once two such answers were read, every trickled
    # request is over, each counted once and cut at the deadline.
    endpoint.mode = "ok"
    requests = endpoint.requests
    wait_until(lambda: endpoint.requests >= requests + 2, what="two prompt answers")
    cut = list(endpoint.cut_after)
    assert management_errors(exporter) == len(cut)
    assert all(POLL_TIMEOUT <= seconds < POLL_TIMEOUT + 0.5 for seconds in cut), cut
    assert "management API answer took longer than the poll's timeout (1 s): cut" in exporter.log()
    # The readings without the management API stand, and the poller goes on.
    assert exporter.metrics().get("celery_queue_length", queue="work") == 0.0
    assert received == []
