"""Readers of setting values: text from a flag or the environment into a typed value.

Each raises ValueError with a message that names what is wrong; the CLI turns it into one line.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen_address(value: str) -> ListenAddress:
    """Parse ``HOST:PORT``, ``:PORT`` or ``[IPv6]:PORT`` the way node_exporter's flag reads."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT or :PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port must be a number, got {port_text!r} in {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be within 0-65535, got {port}")
    return ListenAddress(host, port)


def parse_buckets(value: str) -> tuple[float, ...]:
    """Parse comma-separated, strictly increasing, positive histogram bounds."""
    try:
        bounds = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"buckets must be comma-separated numbers, got {value!r}") from None
    if not bounds:
        raise ValueError("at least one bucket bound is needed")
    if any(b <= 0 or not math.isfinite(b) for b in bounds):
        raise ValueError(f"bucket bounds must be positive and finite, got {value!r}")
    if any(later <= earlier for earlier, later in itertools.pairwise(bounds)):
        raise ValueError(f"bucket bounds must be strictly increasing, got {value!r}")
    return bounds


def seconds(minimum: float) -> Callable[[str], float]:
    """A reader of a finite number of seconds, at least ``minimum``."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected a number of seconds, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number of seconds, got {value!r}")
        if number < minimum:
            raise ValueError(f"expected a number of seconds >= {minimum:g}, got {value!r}")
        return number

    return parse


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A reader of a whole number within [minimum, maximum]."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if number < minimum or (maximum is not None and number > maximum):
            bound = f"within {minimum}-{maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"expected a whole number {bound}, got {value!r}")
        return number

    return parse


SIZE_UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "kB": 10**3, "MB": 10**6, "GB": 10**9}


def size(minimum: int) -> Callable[[str], int]:
    """A reader of a number of bytes, at least ``minimum``: ``268435456``, ``256MiB``, ``64KiB``,
    ``1GiB`` (binary units) or ``500MB`` (decimal ones)."""

    def parse(value: str) -> int:
        text = value.strip()
        factor = 1
        for unit, unit_bytes in SIZE_UNITS.items():
            if text.endswith(unit):
                text, factor = text.removesuffix(unit).strip(), unit_bytes
                break
        try:
            number = float(text) * factor if factor != 1 else int(text)
        except ValueError:
            raise ValueError(f"expected bytes, or a size such as 256MiB, got {value!r}") from None
        if not math.isfinite(number) or number < minimum:
            raise ValueError(f"expected at least {minimum} bytes, got {value!r}")
        return int(number)

    return parse


def choice(choices: Iterable[str], *, accepted: Iterable[str] = ()) -> Callable[[str], str]:
    """A reader of one of ``choices`` (case-insensitive), lowercased; ``accepted`` are further
    values taken but not offered (deprecated ones)."""
    offered = tuple(choices)
    allowed = {*offered, *accepted}

    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in allowed:
            raise ValueError(f"expected one of {', '.join(offered)}, got {value!r}")
        return lowered

    return parse


RESERVED_PATHS = frozenset({"/", "/healthz", "/readyz", "/api/tasks", "/api/workers"})


def parse_telemetry_path(value: str) -> str:
    """An absolute URL path for the metrics page, other than the exporter's other endpoints."""
    if not value.startswith("/") or any(c in value for c in "?# \t"):
        raise ValueError(f"expected an absolute URL path such as /metrics, got {value!r}")
    if value in RESERVED_PATHS:
        raise ValueError(f"{value} is one of the exporter's other endpoints")
    return value


_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def duration(value: str) -> float:
    """A duration as Prometheus writes them (``30s``, ``12h``, ``7d``, ``1h30m``; units ms, s,
    m, h, d, w, y), or ``0`` for none; in seconds."""
    text = value.strip()
    if text == "0":
        return 0.0
    position, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += int(match[1]) * _DURATION_UNITS[match[2]]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"expected a duration such as 30s, 12h or 7d (or 0), got {value!r}")
    return total
