"""Queue depths on Redis, read from the lists exactly as kombu lays them out.

kombu keeps a queue as one Redis list per priority step: ``PREFIX + queue`` for the first step and
``PREFIX + queue + sep + step`` for the others (``priority_steps`` defaults to [0, 3, 6, 9], ``sep``
to ``"\\x06\\x16"``; ``PREFIX`` is ``global_keyprefix``, empty by default), in the database of the
URL. A reader of the base list alone misses every task sent with a priority. The layout comes
from kombu's own Redis channel for the broker URL and transport options (the same ones the workers
use), through its public attributes; the sum mirrors kombu's ``_size``. ``queue_order_strategy``
only orders consumption across queues and changes no key.

A queue's oldest message may be of any size (an 8 MB one, LINDEXed at every poll, took 1.25 GB
out of Redis in 45 s): ``PEEK_SCRIPT`` reads it inside Redis and returns only its task id, at
most ``MAX_TASK_ID`` bytes, so a poll transfers a bounded number of bytes whatever the messages
hold. Redis still copies the message into its script engine (~30 ms for 8 MB on a loaded
machine), so a list's oldest message is peeked at again only when its length changed or every
``REFRESH_POLLS`` polls, ``MAX_PEEKS`` lists a poll at most, ``PEEK_BATCH`` per round trip.

Queues are also found where kombu records them: each exchange's binding set
``PREFIX + "_kombu.binding." + exchange``, whose members read ``routing_key sep pattern sep queue``.
"""

from __future__ import annotations

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


MAX_TASK_ID = 255
"""Longest task id the peek returns (Celery's are 36-character UUIDs)."""
TAIL = 65_536
"""Bytes at a message's end searched first for its headers: kombu writes the (base64) body
first, the headers after it."""

REFRESH_POLLS = 10
"""Polls after which an unchanged list's oldest message is peeked at again."""
MAX_PEEKS = 16
"""Lists whose oldest message one poll peeks at, at most; the others keep their last id."""
PEEK_BATCH = 4
"""Peeks per round trip: Redis answers a pipeline once it ran all of it, and the poll's socket
timeout bounds the wait."""

PEEK_SCRIPT = r"""
local function headers_at(message, from)
  while true do
    local at = string.find(message, '"headers":', from, true)
    if at == nil then return nil end
    if at == 1 or string.sub(message, at - 1, at - 1) ~= '\\' then return at end
    from = at + 1
  end
end
local out = {}
for i, key in ipairs(KEYS) do
  local id = false
  local message = redis.call('LINDEX', key, -1)
  if type(message) == 'string' then
    local at = headers_at(message, math.max(1, #message - TAIL + 1))
    if at == nil and #message > TAIL then at = headers_at(message, 1) end
    if at ~= nil then
      local found = string.match(message, '^%s*{[^{}]-"id"%s*:%s*"([^"\\]*)"', at + 10)
      if found ~= nil and #found <= MAX_TASK_ID then id = found end
    end
  end
  out[i] = id
end
return out
""".replace("MAX_TASK_ID", str(MAX_TASK_ID)).replace("TAIL", str(TAIL))
"""For each list (KEYS): the task id in the headers of its oldest message (the last: kombu
LPUSHes and RPOPs), or false. The headers are found where kombu's envelope has them
(``"headers":`` not inside a string, the tail of the message searched first); the id is their
first "id" key, before any nested object. Only ids and lengths leave Redis."""


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
        self._peek = self.client.register_script(PEEK_SCRIPT)
        self._tails: dict[str, tuple[int, str | None, int]] = {}
        """list key -> (its length, its oldest message's task id, the poll) at its last peek."""
        self._polls = 0
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
        keys = {name: layout.keys(name) for name in names}
        with self.client.pipeline(transaction=False) as pipe:
            for name_keys in keys.values():
                for key in name_keys:
                    pipe.llen(key)
            lengths = pipe.execute()
        every_key = [key for name_keys in keys.values() for key in name_keys]
        sizes = dict(zip(every_key, lengths, strict=True))
        self._peek_changed(sizes)
        readings: dict[str, QueueReading] = {}
        for name, name_keys in keys.items():
            counts = [sizes[key] if isinstance(sizes[key], int) else 0 for key in name_keys]
            oldest = tuple(
                self._tails[key][1] if key in self._tails else None
                for key, size in zip(name_keys, counts, strict=True)
                if size > 0
            )
            readings[name] = QueueReading(length=sum(counts), oldest_ids=oldest)
        return readings

    def _peek_changed(self, sizes: dict[str, Any]) -> None:
        """Peek at the oldest message of the lists whose length changed since their last peek
        (or that were not peeked at for ``REFRESH_POLLS`` polls), the longest unpeeked first."""
        self._polls += 1
        polls, tails = self._polls, self._tails
        for key in [key for key in tails if not sizes.get(key)]:
            del tails[key]  # empty or no longer watched
        due = [
            key
            for key, size in sizes.items()
            if isinstance(size, int)
            and size > 0
            and (
                key not in tails or tails[key][0] != size or polls - tails[key][2] >= REFRESH_POLLS
            )
        ]
        due.sort(key=lambda key: tails[key][2] if key in tails else -1)
        due = due[:MAX_PEEKS]
        for start in range(0, len(due), PEEK_BATCH):
            batch = due[start : start + PEEK_BATCH]
            found = self._peek(keys=batch)
            for key, task_id in zip(batch, found, strict=True):
                text = task_id.decode(errors="replace") if isinstance(task_id, bytes) else None
                tails[key] = (sizes[key], text, polls)

    def close(self) -> None:
        self.connection.release()
