"""RabbitMQ's management API: what a passive declare cannot tell, the unacknowledged messages.

One ``GET /api/queues/<vhost>?columns=...`` per poll lists every queue of the broker URL's
virtual host with its ready, unacknowledged and consumer counts. Credentials come from a file
(``USER:PASSWORD`` on its first line) or from the broker URL, never from a flag value, which
anyone on the host could read in ``ps``.

The credentials go to the configured host only: a redirect is not followed (a 302 to another
host took them along at every poll), it fails the call. An answer is read up to
``MAX_RESPONSE_BYTES`` (a 300 MB body was read whole: RSS 45 -> 645 MB) and within the poll's
timeout as a whole, not per socket read (a server that trickles bytes cannot hold the poller).
"""

from __future__ import annotations

import base64
import json
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
        self._opener = urllib.request.build_opener(_NoRedirects(), urllib.request.ProxyHandler({}))

    def queues(self) -> Mapping[str, QueueCounts]:
        request = urllib.request.Request(self.endpoint, headers=self._headers)
        deadline = time.monotonic() + self.timeout
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                body = _read_bounded(response, deadline)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                raise ManagementError(
                    f"management API answered {exc.code} {exc.reason}, a redirect, to "
                    f"{str(exc.headers.get('Location', ''))[:200]!r}: not followed (the "
                    "credentials go to --rabbitmq-management-url's host only); give the URL it "
                    "points to"
                ) from None
            raise ManagementError(f"management API answered {exc.code} {exc.reason}") from None
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


def _read_bounded(response: Any, deadline: float) -> bytes:
    """The body, read in chunks; ManagementError past ``MAX_RESPONSE_BYTES`` or the deadline."""
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise ManagementError("management API answer took longer than the poll's timeout")
        chunk = response.read(CHUNK)
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
