"""RabbitMQ's management API: what a passive declare cannot tell, the unacknowledged messages.

One ``GET /api/queues/<vhost>?columns=...`` per poll lists every queue of the broker URL's
virtual host with its ready, unacknowledged and consumer counts. Credentials come from a file
(``USER:PASSWORD`` on its first line) or from the broker URL, never from a flag value, which
anyone on the host could read in ``ps``.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLUMNS = "name,messages_ready,messages_unacknowledged,consumers"


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

    def queues(self) -> Mapping[str, QueueCounts]:
        request = urllib.request.Request(self.endpoint, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
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


def _count(value: Any) -> int:
    """A count of the listing; a queue just declared may not have its stats yet (absent)."""
    return value if type(value) is int and value >= 0 else 0
