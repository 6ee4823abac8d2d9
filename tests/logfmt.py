"""A strict logfmt reader for the tests: a line that is not logfmt raises, it is not skipped.

Written from the format as go-logfmt reads it (Prometheus' exporters log through it): pairs
``key=value`` separated by spaces; a value is bare (no space, ``=`` or ``"``) or double-quoted
with backslash escapes; ``key=`` is an empty value.
"""

from __future__ import annotations

import json
import re

_PAIR = re.compile(r'([^\s="]+)=("(?:[^"\\]|\\.)*"|[^\s="]*)(?: |$)')


def parse_line(line: str) -> dict[str, str]:
    """{key: value} of one logfmt line; ValueError if the line is not logfmt all the way."""
    pairs: dict[str, str] = {}
    position = 0
    text = line.rstrip("\n")
    while position < len(text):
        match = _PAIR.match(text, position)
        if match is None:
            raise ValueError(f"not logfmt at column {position}: {text!r}")
        key, raw = match.groups()
        if key in pairs:
            raise ValueError(f"key {key!r} twice in {text!r}")
        # JSON's string escapes are logfmt's (\" \\ \n \t \uXXXX).
        pairs[key] = json.loads(raw) if raw.startswith('"') else raw
        position = match.end()
    if not pairs:
        raise ValueError(f"empty line {line!r}")
    return pairs


def parse_lines(text: str) -> list[dict[str, str]]:
    """Every line of ``text`` (a log), each parsed; fails on the first line that is not logfmt."""
    return [parse_line(line) for line in text.splitlines() if line]
