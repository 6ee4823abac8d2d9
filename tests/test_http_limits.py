"""The HTTP side under crowds and crafted requests, against the real exporter process: many
clients at once, a connection flood past the cap, over-long passwords, garbage requests. Every
error is answered and logged as structured JSON, never a raw traceback."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import bcrypt
import requests

from celery_events_exporter.web import webconfig
from celery_events_exporter.web.server import LISTEN_BACKLOG, MAX_CONNECTIONS
from tests.conftest import ExporterProcess, Metrics, Processes, require_tool, wait_until

CLIENTS = 1000


def assert_log_is_structured(exporter: ExporterProcess) -> list[dict[str, object]]:
    """Every line the exporter wrote is one JSON object: no raw traceback broke the log."""
    lines = [line for line in exporter.log().splitlines() if line.strip()]
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    return entries


async def _held_crowd(
    port: int, count: int, path: str, while_held: Callable[[], Awaitable[None]]
) -> list[bytes]:
    """``count`` clients connect at once and send their request but its closing blank line;
    ``while_held`` runs while the exporter holds every one of them; then each finishes its
    request and reads the whole answer."""

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode())
        await writer.drain()
        return reader, writer

    async def finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(b"\r\n")
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return answer

    clients = await asyncio.wait_for(asyncio.gather(*(connect() for _ in range(count))), 60)
    await while_held()
    return await asyncio.wait_for(asyncio.gather(*(finish(*c) for c in clients)), timeout=120)


def test_a_thousand_clients_at_once_are_all_answered_and_a_scrape_is_not_starved(
    redis_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(redis_url)
    # The kernel queues LISTEN_BACKLOG connections for the accept loop, not the stdlib's 5.
    listening = subprocess.run(
        [require_tool("ss"), "-ltnH", f"sport = :{exporter.port}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert listening[0] == "LISTEN" and int(listening[2]) == LISTEN_BACKLOG, listening

    def scraped_amid_the_crowd() -> bool:
        response = exporter.get("/metrics")
        assert response.status_code == 200
        # The scrape's own connection is the one open besides the crowd's.
        open_now = Metrics.parse(response.text).get("celery_exporter_http_connections")
        return open_now == CLIENTS + 1

    async def scrape() -> None:
        # The accept loop takes the crowd's connections one by one: once it holds them all, a
        # scrape is answered while none of theirs is.
        await asyncio.to_thread(
            wait_until, scraped_amid_the_crowd, timeout=30, what="a scrape amid the held crowd"
        )

    answers = asyncio.run(_held_crowd(exporter.port, CLIENTS, "/api/workers", scrape))
    statuses = [answer.split(b"\r\n", 1)[0] for answer in answers]
    assert statuses == [b"HTTP/1.0 200 OK"] * CLIENTS
    assert all(answer.endswith(b"\r\n\r\n[]") for answer in answers)
    metrics = exporter.metrics()
    assert metrics.get("celery_exporter_http_connections_refused_total") == 0.0
    assert metrics.get("celery_exporter_http_errors_total") is None
    assert exporter.proc.poll() is None


def test_connections_past_the_cap_get_a_503_at_once_and_are_counted(
    redis_url: str, processes: Processes
) -> None:
    exporter = processes.exporter(redis_url)
    idle: list[socket.socket] = []
    refusals = 0
    try:
        for _ in range(MAX_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", exporter.port)))

        def refused() -> bool:
            nonlocal refusals
            with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as extra:
                extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                answer = extra.recv(4096)
            if answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"):
                refusals += 1
                assert answer.endswith(b"\r\n\r\ntoo many connections\n")
                return True
            return False

        # The accept loop takes the idle connections one by one: once it has them all, the
        # next one is refused.
        wait_until(refused, timeout=30, what="a connection past the cap to be refused")
    finally:
        for sock in idle:
            sock.close()

    def settled() -> bool:
        metrics = exporter.metrics()
        # The scrape's own connection is the one open.
        return metrics.get("celery_exporter_http_connections") == 1.0

    wait_until(settled, timeout=30, what="the idle connections to close")
    metrics = exporter.metrics()
    assert metrics.get("celery_exporter_http_connections_refused_total") == float(refusals)
    entries = assert_log_is_structured(exporter)
    assert any(entry["msg"] == "http connection refused: too many open" for entry in entries)


def test_over_long_passwords_and_garbage_requests_are_answered_and_logged_as_json(
    redis_url: str, processes: Processes, tmp_path: Path
) -> None:
    password = "p" * 40
    web_config = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    web_config.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    exporter = processes.exporter(
        redis_url, "--web-config-file", str(web_config), auth=("prometheus", password)
    )
    url = f"{exporter.url}/metrics"
    for long_password in ("x" * 73, "é" * 37, "y" * 10_000):  # 73, 74 and 10 000 bytes
        response = requests.get(url, auth=("prometheus", long_password), timeout=5)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith('Basic realm="')
    assert exporter.get("/metrics").status_code == 200

    def raw(request: bytes) -> bytes:
        """The answer to ``request``; the server may close before it has read all of it."""
        chunks = []
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as sock:
            try:
                sock.sendall(request)
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except (ConnectionResetError, BrokenPipeError):
                pass
        return b"".join(chunks)

    # An HTTP/0.9-style line gets its error as a bare body (there is no status line in 0.9).
    assert b"Error code: 400" in raw(b"GARBAGE\r\n\r\n")
    assert raw(b"BREW /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 501 ")
    assert raw(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 414 ")
    assert raw(b"GET /metrics HTTP/1.1\r\nX: " + b"b" * 70_000 + b"\r\n\r\n").startswith(
        b"HTTP/1.0 431 "
    )
    bad_base64 = base64.b64encode(b"\xff\xfe:\x00").decode()
    assert raw(
        f"GET /metrics HTTP/1.1\r\nAuthorization: Basic {bad_base64}\r\n\r\n".encode()
    ).startswith(b"HTTP/1.0 401 ")
    assert exporter.proc.poll() is None
    assert_log_is_structured(exporter)
    assert "Traceback" not in exporter.log()


def test_the_hash_helper_refuses_a_password_bcrypt_cannot_take() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "celery_events_exporter.web.webconfig", "hash", "--cost", "4"],
        input="z" * 73 + "\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "the password is 73 bytes long; bcrypt takes at most 72\n"
    auth = webconfig.BasicAuth({"u": bcrypt.hashpw(b"z" * 72, bcrypt.gensalt(4))})
    assert (auth.check("u", "z" * 72), auth.check("u", "z" * 73)) == (True, False)
