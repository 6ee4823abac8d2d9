"""How much of each field of a task event the recent-task store keeps: text cut by bytes, numbers
checked for range, so that no crafted event can make a record large or a row unservable.

The limits are generous for what Celery sends (a uuid is 36 bytes, a task name rarely 100, its
reprs stop at 1 024 characters) and small enough that 10 000 records of crafted 200 kB fields
stay a few tens of MB. docs/limits.md lists them.
"""

from __future__ import annotations

from typing import Any

import orjson

PAYLOAD_BYTES = 4096
"""Bytes kept of args, kwargs, result, exception and traceback (a traceback keeps its end)."""
ID_BYTES = 128
"""Bytes kept of a task uuid, root_id and parent_id (Celery's are 36)."""
NAME_BYTES = 512
"""Bytes kept of a task name, a worker hostname and a queue name."""
SHORT_TEXT_BYTES = 256
"""Bytes kept of eta and expires (ISO 8601 timestamps, about 32)."""
MAX_RETRIES = 1_000_000
"""Largest retry count taken as true; a larger one (or a negative one) is ignored."""
MAX_RUNTIME = 1e9
"""Longest runtime taken as true, in seconds (31 years)."""
MAX_TIMESTAMP = 1e11
"""Latest event timestamp taken as true (the year 5138); a later, negative, NaN or non-number
timestamp is replaced by the exporter's clock."""


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` bytes of UTF-8, cut at its end on a character boundary."""
    if len(text) <= limit // 4 or (len(text) <= limit and text.isascii()):
        return text  # a character is at most 4 bytes
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")


def cut_tail(text: str, limit: int) -> str:
    """``text`` within ``limit`` bytes of UTF-8, keeping its end (a traceback's last frames)."""
    if len(text) <= limit // 4 or (len(text) <= limit and text.isascii()):
        return text
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    return encoded[-limit:].decode("utf-8", "ignore")


def text(value: Any, limit: int) -> str | None:
    """A text field: cut to ``limit`` bytes; ``None`` for anything but a string."""
    return cut(value, limit) if type(value) is str else None


def payload(value: Any) -> Any:
    """Args, kwargs or a result: a repr string cut to ``PAYLOAD_BYTES``; JSON data (old
    protocol-1 clients) kept as is while its JSON fits, else its JSON text, cut."""
    if value is None or type(value) is str:
        return value if value is None else cut(value, PAYLOAD_BYTES)
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:  # nested past orjson's depth: nothing servable in it
        return "…"
    if len(encoded) <= PAYLOAD_BYTES:
        return value
    return cut(encoded.decode(), PAYLOAD_BYTES)


def timestamp(value: Any, fallback: float) -> float:
    """An event timestamp in seconds, or ``fallback`` when it is not a plausible one."""
    if (type(value) is float or type(value) is int) and 0 < value < MAX_TIMESTAMP:
        return float(value)
    return fallback


def runtime(value: Any) -> float | None:
    """A runtime in seconds: not negative nor past ``MAX_RUNTIME`` (nor NaN), else ``None``."""
    if (type(value) is float or type(value) is int) and 0 <= value <= MAX_RUNTIME:
        return float(value)
    return None


def retries(value: Any) -> int | None:
    """A retry count within 0-``MAX_RETRIES``, else ``None``."""
    return value if type(value) is int and 0 <= value <= MAX_RETRIES else None
