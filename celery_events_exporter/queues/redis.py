"""Queue depths on Redis, read from the lists exactly as kombu lays them out.

kombu keeps a queue as one Redis list per priority step: ``PREFIX + queue`` for the first step and
``PREFIX + queue + sep + step`` for the others (``priority_steps`` defaults to [0, 3, 6, 9], ``sep``
to ``"\\x06\\x16"``; ``PREFIX`` is ``global_keyprefix``, empty by default), in the database of the
URL. A reader of the base list alone misses every task sent with a priority. The layout comes
from kombu's own Redis channel for the broker URL and transport options (the same ones the workers
use), through its public attributes; the sum mirrors kombu's ``_size``. ``queue_order_strategy``
only orders consumption across queues and changes no key.

Queues are also found where kombu records them: each exchange's binding set
``PREFIX + "_kombu.binding." + exchange``, whose members read ``routing_key sep pattern sep queue``.
"""

from __future__ import annotations

import json
import re
import time
from bisect import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from celery_events_exporter.broker_options import broker_connection
from celery_events_exporter.queues.reading import QueueReading

PRIORITY_STEPS = (0, 3, 6, 9)
SEP = "\x06\x16"
BINDING_PREFIX = "_kombu.binding."
SCAN_COUNT = 1000
DISCOVER_EVERY = 60.0
"""Seconds between two scans for kombu's binding sets: a SCAN walks the whole database."""

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True)
class RedisLayout:
    """Where kombu keeps a queue's messages and bindings for one set of transport options."""

    prefix: str = ""
    sep: str = SEP
    priority_steps: tuple[int, ...] = PRIORITY_STEPS
    binding_prefix: str = BINDING_PREFIX

    @classmethod
    def of(cls, channel: Any) -> RedisLayout:
        """The layout kombu's Redis ``channel`` uses (transport options already applied)."""
        return cls(
            prefix=channel.global_keyprefix or "",
            sep=channel.sep,
            priority_steps=tuple(channel.priority_steps),
            binding_prefix=channel.keyprefix_queue % ("",),
        )

    def priority(self, n: int) -> int:
        """The step a message of priority ``n`` is filed under (kombu's ``Channel.priority``)."""
        steps = self.priority_steps
        return steps[bisect(steps, n) - 1]

    def keys(self, queue: str) -> list[str]:
        """The lists holding ``queue``'s messages, one per priority step, prefix included."""
        keys = []
        for step in self.priority_steps:
            level = self.priority(step)
            keys.append(f"{self.prefix}{queue}{self.sep}{level}" if level else self.prefix + queue)
        return keys

    def binding_pattern(self) -> str:
        """A SCAN pattern matching every exchange's binding set."""
        return _GLOB_SPECIAL.sub(r"\\\1", self.prefix + self.binding_prefix) + "*"

    def bound_queues(self, members: Iterable[bytes | str]) -> list[str]:
        """Queue names out of a binding set's members."""
        queues = []
        for member in members:
            text = member.decode(errors="replace") if isinstance(member, bytes) else member
            parts = text.split(self.sep)
            if len(parts) == 3 and parts[2]:
                queues.append(parts[2])
        return queues


def oldest_task_id(message: bytes | None) -> str | None:
    """The task id of a kombu envelope (the oldest message of a list), if it carries one."""
    if not message:
        return None
    try:
        envelope = json.loads(message)
    except ValueError:
        return None
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    if not isinstance(task_id, str):  # protocol 1 kept the id in the body: not peeked at
        return None
    return task_id


class RedisQueues:
    """Reads queue depths over a Redis connection of its own, with socket timeouts so that a
    stalled server fails the poll instead of hanging it."""

    def __init__(self, broker_url: str, transport_options: dict[str, Any], timeout: float) -> None:
        options = {
            **transport_options,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        self.connection = broker_connection(broker_url, options)
        channel: Any = self.connection.default_channel  # pings the server: fails fast
        self.layout = RedisLayout.of(channel)
        self.client = redis.Redis(connection_pool=channel.pool)
        self._discovered_at: float | None = None

    def discover(self) -> list[str]:
        """Queues bound in kombu's binding sets, scanned at most every ``DISCOVER_EVERY``."""
        now = time.monotonic()
        if self._discovered_at is not None and now - self._discovered_at < DISCOVER_EVERY:
            return []
        self._discovered_at = now
        queues: list[str] = []
        layout = self.layout
        for key in self.client.scan_iter(match=layout.binding_pattern(), count=SCAN_COUNT):
            queues.extend(layout.bound_queues(self.client.smembers(key)))
        return queues

    def read(self, names: Sequence[str]) -> dict[str, QueueReading]:
        layout = self.layout
        steps = len(layout.priority_steps)
        with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                keys = layout.keys(name)
                for key in keys:
                    pipe.llen(key)
                # kombu LPUSHes and RPOPs: each list's oldest message is its last.
                for key in keys:
                    pipe.lindex(key, -1)
            replies = pipe.execute()
        readings: dict[str, QueueReading] = {}
        width = 2 * steps
        for index, name in enumerate(names):
            chunk = replies[index * width : (index + 1) * width]
            sizes = [size if isinstance(size, int) else 0 for size in chunk[:steps]]
            tails = zip(sizes, chunk[steps:], strict=True)
            oldest = tuple(oldest_task_id(tail) for size, tail in tails if size > 0)
            readings[name] = QueueReading(length=sum(sizes), oldest_ids=oldest)
        return readings

    def close(self) -> None:
        self.connection.release()
