"""What the user tells us about the broker: the URL (or Celery's failover list) and the kombu
transport options, checked before anything connects, masked wherever they are shown, and turned
into a kombu ``Connection`` the same way for every part of the exporter that connects.

A URL kombu would misread (``localhost:6379`` is an AMQP host named "localhost:6379" to kombu)
and an option of the wrong type (``global_keyprefix`` as the number 4711 makes kombu raise a
TypeError at every connection attempt) would otherwise turn into a retry loop that logs
"broker unreachable" forever; here they are refused at start with one line.

A broker URL is what Celery's ``broker_url`` takes: one URL, or several separated by ``;``
(kombu's failover list: ``redis://:pwA@h1/0;redis://:pwB@h2/0``, each tried in turn; for Redis
Sentinel, the sentinels: ``sentinel://h:26379;sentinel://h:26380`` with the transport option
``master_name``). Celery and kombu split on ``;`` only: a comma-separated list is refused here,
with the fix named.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from kombu import Connection
from kombu.transport import TRANSPORT_ALIASES

# -- URLs ----------------------------------------------------------------------------------------

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCHEME_WITHOUT_COLON = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)//")


FAILOVER_SEPARATOR = ";"
"""What separates the URLs of a failover list, in kombu's ``Connection`` and Celery's
``broker_url``."""

FAST_PATH_OPTION = "exporter_fast_path"
"""Transport option read by the exporter's intake: false keeps kombu's intake path."""
EXPORTER_ONLY_OPTIONS = frozenset({FAST_PATH_OPTION})
"""Transport options the exporter reads itself (``celery_events_exporter.intake``); kombu's AMQP
transport would hand them to py-amqp as connection arguments, so no connection gets them."""


def split_broker_urls(value: str) -> list[str]:
    """The URLs of a broker URL or failover list, in order, surrounding blanks removed."""
    return [url.strip() for url in value.split(FAILOVER_SEPARATOR)]


def parse_broker_url(value: str) -> str:
    """Check a broker URL (or kombu's ``;``-separated failover list); returns it unchanged."""
    if not value.strip():
        raise ValueError("the broker URL is empty")
    for url in split_broker_urls(value):
        _check_one_url(url)
    return value


def check_broker(url: str, transport_options: dict[str, Any]) -> None:
    """What only the URL and the transport options together tell: kombu's Sentinel transport
    needs ``master_name`` (without it, every connection attempt raises ValueError)."""
    if is_sentinel(url) and not transport_options.get("master_name"):
        raise ValueError(
            f"the Sentinel broker URL {mask_url(url)!r} needs the transport option master_name "
            "(Celery's broker_transport_options={'master_name': ...}): "
            "--broker-transport-option master_name=NAME"
        )


def is_sentinel(url: str) -> bool:
    """True if ``url`` (or its failover list) reaches Redis through Sentinel."""
    return any(part.lower().startswith("sentinel://") for part in split_broker_urls(url))


def _check_one_url(url: str) -> None:
    match = _SCHEME.match(url)
    if match is None:
        typo = _SCHEME_WITHOUT_COLON.match(url)
        if typo is not None:
            fixed = f"{typo.group(1)}://{url[typo.end() :]}"
            raise ValueError(f"{url!r} has no ':' after its scheme: did you mean {fixed!r}?")
        raise ValueError(
            f"{url!r} has no scheme: write it as a URL, e.g. redis://{url or 'localhost'}"
            if url
            else "an empty broker URL"
        )
    if "," in url[match.end() :] and "://" in url[match.end() :]:
        raise ValueError(
            f"{mask_url(url)!r} looks like a comma-separated list of URLs: Celery and kombu "
            "separate failover URLs with ';'"
        )
    scheme = match.group(1)
    known = {alias.lower() for alias in TRANSPORT_ALIASES}
    if scheme.lower() not in known and "+" not in scheme:
        raise ValueError(
            f"unknown broker URL scheme {scheme!r}; kombu knows "
            + ", ".join(sorted(a for a in TRANSPORT_ALIASES if a.islower()))
        )
    try:
        urlsplit(url).port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        raise ValueError(f"{mask_url(url)!r} has a port that is not a number") from None
    try:
        Connection(url).transport  # noqa: B018 (imports the transport or raises)
    except Exception as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ValueError(f"cannot use broker URL {mask_url(url)!r}: {message}") from None


MASK = "**"
"""What stands for a password wherever a URL is shown (kombu's own mask)."""

_USERINFO_PASSWORD = re.compile(
    r"(?P<lead>://|;(?![A-Za-z][A-Za-z0-9+.-]*://))(?P<user>[^:@/;\s]*):(?:(?!://)[^;\s])*@"
)
"""The password of every URL of a list: after ``scheme://`` or after the ``;`` that starts a
scheme-less alternate (kombu takes ``amqp://u:p@h1;u:p2@h2``). Greedy up to the last ``@``
before the next URL: a password with an unescaped ``@`` is masked whole, never half."""
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&](?:password|passwd|pass)=)[^&;\s]*", re.IGNORECASE)


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it masked: a broker URL, a failover list of
    them, or a message that quotes them. Never raises, whatever the text (a URL that cannot be
    parsed is masked all the same: the rule is textual, not a parse)."""
    masked = _USERINFO_PASSWORD.sub(lambda m: f"{m.group('lead')}{m.group('user')}:{MASK}@", text)
    return _QUERY_PASSWORD.sub(lambda m: f"{m.group('key')}{MASK}", masked)


def broker_address(url: str) -> str:
    """``host:port`` a connection to ``url`` (the first URL of a failover list) tries first,
    kombu's defaults filled in, for logs; never the password."""
    return connection_address(Connection(split_broker_urls(url)[0]))


def connection_address(conn: Connection) -> str:
    """``host:port`` ``conn`` tries (its current URL of a failover list), for logs."""
    host = conn.hostname or "localhost"
    port = conn.port or _default_port(conn)
    return f"{host}:{port}" if port else host


def broker_connection(url: str, transport_options: dict[str, Any], **kwargs: Any) -> Connection:
    """A kombu ``Connection`` to ``url`` (one URL or a failover list: kombu tries them in turn,
    and for ``sentinel://`` asks the sentinels for ``master_name``'s address at every connection,
    so a failover is followed), with the user's transport options less the exporter's own.
    ``kwargs`` go to ``Connection`` (timeouts, heartbeat). Every part of the exporter that
    connects (the intake, the queue poller, the controller's options) goes through here."""
    options = {k: v for k, v in transport_options.items() if k not in EXPORTER_ONLY_OPTIONS}
    return Connection(url, transport_options=options, **kwargs)


def connection_attempts(conn: Connection) -> int:
    """How many retries ``Connection.ensure_connection`` needs to try every URL of ``conn``'s
    failover list once (at least one retry, as a single URL always had: kombu waits
    ``interval_start`` before it)."""
    return max(1, len(conn.alt) - 1)


def _default_port(conn: Connection) -> int | None:
    try:
        port = conn.transport.default_port
    except Exception:  # a transport whose module cannot be imported: no port to name
        return None
    return port if isinstance(port, int) and port else None


# -- transport options ---------------------------------------------------------------------------

JSON_MARK = ":="
"""``KEY:=JSON`` gives an option's value as JSON (``sentinel_kwargs:={"password": "x"}``);
``KEY=VALUE`` gives text, converted only for the options below that kombu wants typed."""


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("expected a number") from None


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("expected a whole number") from None


def _integers(text: str) -> list[int]:
    stripped = text.strip()
    if stripped.startswith("["):
        return _from_json(stripped, list[int])  # type: ignore[no-any-return]
    try:
        return [int(part) for part in stripped.split(",") if part.strip()]
    except ValueError:
        raise ValueError("expected comma-separated whole numbers, e.g. 0,3,6,9") from None


def _object(text: str) -> dict[str, Any]:
    return _from_json(text, dict)  # type: ignore[no-any-return]


def _from_json(text: str, kind: Any) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError("expected JSON") from None
    _check_type(value, kind)
    return value


OPTION_TYPES: dict[str, tuple[Callable[[str], Any], Any]] = {
    # name: (reader of KEY=VALUE text, the type a KEY:=JSON value must have)
    # kombu.transport.redis Channel and SentinelChannel
    "visibility_timeout": (_number, float),
    "socket_timeout": (_number, float),
    "socket_connect_timeout": (_number, float),
    "polling_interval": (_number, float),
    "max_connections": (_whole, int),
    "health_check_interval": (_whole, int),
    "reauth_check_interval": (_whole, int),
    "unacked_mutex_expire": (_whole, int),
    "unacked_restore_limit": (_whole, int),
    "unacked_restore_interval": (_whole, int),
    "unacked_restore_throttle": (_whole, int),
    "min_other_sentinels": (_whole, int),
    "priority_steps": (_integers, list[int]),
    "fanout_prefix": (_boolean, bool),
    "fanout_patterns": (_boolean, bool),
    "ack_emulation": (_boolean, bool),
    "socket_keepalive": (_boolean, bool),
    "retry_on_timeout": (_boolean, bool),
    "sentinel_fanout_compat": (_boolean, bool),
    "sentinel_kwargs": (_object, dict),
    # kombu.Connection's retry policy (read for every transport)
    "max_retries": (_whole, int),
    "interval_start": (_number, float),
    "interval_step": (_number, float),
    "interval_max": (_number, float),
    "connect_retries_timeout": (_number, float),
    # kombu.transport.pyamqp: passed on to amqp.Connection
    "connect_timeout": (_number, float),
    "read_timeout": (_number, float),
    "write_timeout": (_number, float),
    "confirm_publish": (_boolean, bool),
    "channel_max": (_whole, int),
    "frame_max": (_whole, int),
    "client_properties": (_object, dict),
    "socket_settings": (_object, dict),
    # the exporter's own (FAST_PATH_OPTION above)
    "exporter_fast_path": (_boolean, bool),
    # text, whatever it looks like: listed so that a KEY:=JSON value must be a string too
    **{
        name: (str, str)
        for name in (
            "global_keyprefix",
            "sep",
            "master_name",
            "queue_order_strategy",
            "client_name",
            "unacked_key",
            "unacked_index_key",
            "unacked_mutex_key",
            "body_encoding",
            "deadletter_queue",
            "login_method",
            "locale",
        )
    },
}
"""The types kombu's Redis and AMQP transports want for their options. An option not listed is
passed as text from KEY=VALUE, or as whatever JSON gives from KEY:=JSON."""


def _check_type(value: Any, kind: Any) -> None:
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == list[int]:
        ok = isinstance(value, list) and all(
            isinstance(item, int) and not isinstance(item, bool) for item in value
        )
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(f"expected {_type_name(kind)}, got {json.dumps(value)}")


def _type_name(kind: Any) -> str:
    names = {
        float: "a number",
        int: "a whole number",
        bool: "true or false",
        dict: "a JSON object",
        str: "a string",
    }
    return names.get(kind, "a list of whole numbers")


def parse_transport_option(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` (text, converted for the options in ``OPTION_TYPES``) or ``KEY:=JSON``
    (a JSON value, checked against ``OPTION_TYPES`` for the options listed there)."""
    key, sep, raw = text.partition("=")
    as_json = key.endswith(":")
    key = key.removesuffix(":").strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE or KEY:=JSON, got {text!r}")
    reader, kind = OPTION_TYPES.get(key, (str, None))
    try:
        if as_json:
            try:
                value = json.loads(raw)
            except ValueError:
                raise ValueError(f"{raw!r} is not JSON") from None
            if kind is not None:
                if kind is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                _check_type(value, kind)
            return key, value
        return key, reader(raw)
    except ValueError as exc:
        raise ValueError(f"transport option {key}: {exc} (got {text!r})") from None
