"""What Grafana's PostgreSQL data source does to a panel's SQL before running it, for the tests.

Grafana first interpolates the dashboard variables (``${name:sqlstring}``: the value in single
quotes, each single quote doubled; ``$__interval`` and the like), then its SQL macros:
``$__timeFilter(col)`` becomes ``col BETWEEN 'FROM' AND 'TO'`` with RFC 3339 UTC times
(Grafana's PostgreSQL macro engine, ``RFC3339Nano``),
``$__timeFrom()`` / ``$__timeTo()`` the quoted times, ``$__unixEpochFrom()`` /
``$__unixEpochTo()`` the Unix seconds. Only these forms are accepted: a variable interpolated
raw (``$name``, ``${name}``) into SQL raises, as does an unknown macro or variable, so a panel
whose SQL could be injected, or that Grafana would leave half-substituted, fails its test.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

_MACRO_CALL = re.compile(r"\$__(timeFilter|timeFrom|timeTo|unixEpochFrom|unixEpochTo)\(([^)]*)\)")
_INTERVAL = re.compile(r"\$__(interval_ms|interval)\b")
_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")


class UnsafeSql(ValueError):
    """A variable would reach the SQL unquoted, or a macro or variable is unknown."""


def sql_string(value: str) -> str:
    """Grafana's ``sqlstring`` format of a single value."""
    return "'" + value.replace("'", "''") + "'"


def _rfc3339(moment: float) -> str:
    """Go's ``time.RFC3339Nano`` of a UTC time, as Grafana formats it: Grafana's time range is
    in milliseconds, and Go drops the fraction's trailing zeros (and the dot with them)."""
    millis = round(moment * 1000)
    seconds, fraction = divmod(millis, 1000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += f".{fraction:03d}".rstrip("0")
    return text + "Z"


def substitute(
    sql: str,
    variables: Mapping[str, str],
    *,
    time_from: float,
    time_to: float,
    interval_seconds: int = 60,
) -> str:
    """``sql`` as the PostgreSQL data source would run it for the time range
    [``time_from``, ``time_to``] (Unix seconds) and these variable values."""

    def interval(match: re.Match[str]) -> str:
        if match.group(1) == "interval_ms":
            return str(interval_seconds * 1000)
        return f"{interval_seconds}s"

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        if name.startswith("__"):
            return match.group(0)  # a macro: expanded after the variables, as Grafana does
        if match.group(2) != "sqlstring":
            raise UnsafeSql(
                f"variable {name!r} reaches the SQL unquoted: use ${{{name}:sqlstring}}"
            )
        if name not in variables:
            raise UnsafeSql(f"unknown variable {name!r}")
        return sql_string(variables[name])

    def macro(match: re.Match[str]) -> str:
        kind, argument = match.group(1), match.group(2).strip()
        if kind == "timeFilter":
            if not re.fullmatch(r"\w+", argument):
                raise UnsafeSql(f"$__timeFilter takes a column name, got {argument!r}")
            return f"{argument} BETWEEN '{_rfc3339(time_from)}' AND '{_rfc3339(time_to)}'"
        if argument:
            raise UnsafeSql(f"$__{kind}() takes no argument, got {argument!r}")
        return {
            "timeFrom": f"'{_rfc3339(time_from)}'",
            "timeTo": f"'{_rfc3339(time_to)}'",
            "unixEpochFrom": str(int(time_from)),
            "unixEpochTo": str(int(time_to)),
        }[kind]

    # Grafana's order: the front end interpolates the variables, the back end the macros.
    expanded = _MACRO_CALL.sub(macro, _INTERVAL.sub(interval, _VARIABLE.sub(variable, sql)))
    leftover = re.search(r"\$__\w+", expanded)
    if leftover:
        raise UnsafeSql(f"unknown macro {leftover.group(0)}")
    return expanded
