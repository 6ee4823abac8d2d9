"""RabbitMQ's management API: what a passive declare cannot tell, the unacknowledged messages.

One ``GET /api/queues/<vhost>?columns=...`` per poll lists every queue of the broker URL's
virtual host with its ready, unacknowledged and consumer counts. Credentials come from a file
(``USER:PASSWORD`` on its first line) or from the broker URL, never from a flag value, which
anyone on the host could read in ``ps``.

The credentials go to the configured host only: a redirect is not followed (a 302 to another
host took them along at every poll), it fails the call. An answer is read up to
``MAX_RESPONSE_BYTES`` (a 300 MB body was read whole: RSS 45 -> 645 MB) and within the poll's
timeout as a whole, not per socket read: a watchdog shuts the call's socket at its deadline, so
a server that trickles its headers or its body cannot hold the poller.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLUMNS = "name,messages_ready,messages_unacknowledged,consumers"
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""Bytes of a listing read at most (its four columns take ~100 bytes a queue: 160 000 queues)."""
CHUNK = 65_536


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: urllib would replay the request, Authorization header included,
    to wherever the answer points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Watchdog:
    """Shuts the sockets of one call down at its deadline: a read blocked on a server that
    trickles bytes (each within the socket timeout) then ends at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.fired = False

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.fired:
                _shut(sock)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already: nothing left to cut
        sock.shutdown(socket.SHUT_RDWR)


class _WatchedHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Opens http and https URLs on connections that hand their socket to the current call's
    ``watchdog`` once connected (urllib gives the socket up after the headers; the response
    keeps reading from it)."""

    def __init__(self) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(context=self._tls)
        self.watchdog = _Watchdog()

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._watched(http.client.HTTPConnection), req)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._watched(http.client.HTTPSConnection), req, context=self._tls)

    def _watched(self, base: type[http.client.HTTPConnection]) -> Any:
        handler = self

        class Watched(base):  # type: ignore[valid-type,misc]
            def connect(self) -> None:
                super().connect()
                handler.watchdog.watch(self.sock)

        return Watched


class ManagementError(Exception):
    """The management API answered something unusable (an HTTP error, not JSON, no list)."""


def parse_management_url(value: str) -> str:
    """An ``http(s)://host:port[/prefix]`` URL without credentials; ValueError says why not."""
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http(s)://HOST:PORT, got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "credentials in the URL would show in ps: put USER:PASSWORD in the file of "
            "--rabbitmq-management-credentials-file instead"
        )
    return value.strip().rstrip("/")


def read_credentials(path: str) -> tuple[str, str]:
    """(user, password) from the first line of ``path``, ``USER:PASSWORD``."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    line = text.splitlines()[0] if text else ""
    user, sep, password = line.partition(":")
    if not sep or not user:
        raise ValueError(f"{path} must hold USER:PASSWORD on its first line")
    return user, password


@dataclass(frozen=True)
class QueueCounts:
    ready: int
    unacked: int
    consumers: int


class ManagementApi:
    """Reads one virtual host's queues from the management API."""

    def __init__(self, url: str, vhost: str, credentials: tuple[str, str], timeout: float) -> None:
        self.endpoint = f"{url}/api/queues/{urllib.parse.quote(vhost, safe='')}?columns={COLUMNS}"
        token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
        self.timeout = timeout
        # No proxy from the environment either: the credentials go to the URL's host only.
        self._handler = _WatchedHandler()
        self._opener = urllib.request.build_opener(
            _NoRedirects(), urllib.request.ProxyHandler({}), self._handler
        )

    def queues(self) -> Mapping[str, QueueCounts]:
        request = urllib.request.Request(self.endpoint, headers=self._headers)
        deadline = time.monotonic() + self.timeout
        watchdog = self._handler.watchdog = _Watchdog()
        timer = threading.Timer(self.timeout, watchdog.fire)
        timer.daemon = True
        timer.start()
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                body = _read_bounded(response, deadline, self.timeout)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                raise ManagementError(
                    f"management API answered {exc.code} {exc.reason}, a redirect, to "
                    f"{str(exc.headers.get('Location', ''))[:200]!r}: not followed (the "
                    "credentials go to --rabbitmq-management-url's host only); give the URL it "
                    "points to"
                ) from None
            raise ManagementError(f"management API answered {exc.code} {exc.reason}") from None
        except (OSError, http.client.HTTPException):
            if watchdog.fired:  # what the cut socket made of it: say why
                raise ManagementError(_too_slow(self.timeout)) from None
            raise
        finally:
            timer.cancel()
        try:
            listed: Any = json.loads(body)
        except ValueError:
            raise ManagementError("management API answered something that is not JSON") from None
        if not isinstance(listed, list):
            raise ManagementError("management API answered no list of queues")
        found: dict[str, QueueCounts] = {}
        for queue in listed:
            if not isinstance(queue, dict) or not isinstance(queue.get("name"), str):
                continue
            found[queue["name"]] = QueueCounts(
                ready=_count(queue.get("messages_ready")),
                unacked=_count(queue.get("messages_unacknowledged")),
                consumers=_count(queue.get("consumers")),
            )
        return found


def _too_slow(timeout: float) -> str:
    return f"management API answer took longer than the poll's timeout ({timeout:g} s): cut"


def _read_bounded(response: Any, deadline: float, timeout: float) -> bytes:
    """The body, read as it arrives (``read1``: what one socket read brings, not ``CHUNK``
    bytes at a time, which a trickle would take hours to fill); ManagementError past
    ``MAX_RESPONSE_BYTES`` or the deadline (the watchdog ends a read blocked past it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read1(CHUNK)
        if time.monotonic() > deadline:
            raise ManagementError(_too_slow(timeout))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise ManagementError(
                f"management API answer over {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB: not read"
            )
        chunks.append(chunk)


def _count(value: Any) -> int:
    """A count of the listing; a queue just declared may not have its stats yet (absent)."""
    return value if type(value) is int and value >= 0 else 0
