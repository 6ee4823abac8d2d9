"""Structured logs in one format for every line: logfmt (Prometheus' own exporters' default) or
JSON, with the same keys in both: ``ts``, ``level``, ``logger``, ``msg``, then the line's fields.

structlog's loggers and the stdlib's (celery, kombu), Python warnings and exceptions that end a
thread all go through the same handler, so a log shipper never meets a line in another format.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import Any

import structlog

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("logfmt", "json")
DEPRECATED_LOG_FORMATS: Mapping[str, str] = {
    "console": "logfmt",
    "auto": "logfmt on a terminal, json otherwise",
}
"""Values the former ``--log-format`` took, still accepted: what each now means."""

FIRST_KEYS = ("ts", "level", "logger", "msg")


def resolve_log_format(name: str) -> str:
    """The format a (possibly deprecated) ``--log.format`` value stands for."""
    if name == "console":
        return "logfmt"
    if name == "auto":
        return "logfmt" if sys.stderr.isatty() else "json"
    return name


def configure(level: str = "info", fmt: str = "logfmt") -> None:
    """Route structlog, the stdlib loggers, warnings and uncaught exceptions to stderr in one
    format (``logfmt`` or ``json``; deprecated values are resolved)."""
    fmt = resolve_log_format(fmt)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(default=str) if fmt == "json" else render_logfmt
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.EventRenamer("msg"),
                _first_keys_first,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kombu and amqp log every reconnect attempt at warning with tracebacks; our own
    # "broker unreachable" line says the same once.
    for noisy in ("kombu", "amqp", "celery"):
        logging.getLogger(noisy).setLevel(max(logging.ERROR, root.level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception


def sparse(occurrence: int) -> bool:
    """Whether the ``occurrence``-th time a repeated problem happens is worth a log line: the
    1st, 2nd, 4th, 8th... (powers of two), so a flood of them logs a few lines, not millions,
    and the count in each line says how bad it got."""
    return occurrence & (occurrence - 1) == 0


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


def _first_keys_first(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    ordered = {key: event_dict.pop(key) for key in FIRST_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def render_logfmt(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
    """One logfmt line, quoted and escaped as go-logfmt writes it: a value with a space, ``=``,
    ``"``, a backslash or a control character is quoted, and newlines inside it are ``\\n``, so
    a traceback stays on its line."""
    return " ".join(f"{_logfmt_key(k)}={_logfmt_value(v)}" for k, v in event_dict.items())


def _logfmt_key(key: Any) -> str:
    text = str(key)
    cleaned = "".join("_" if c <= " " or c in '="' or c == "\x7f" else c for c in text)
    return cleaned or "_"


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _logfmt_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple | dict):
        text = json.dumps(value, default=str, separators=(",", ":"))
    else:
        text = str(value)
    if text and not any(c <= " " or c in '="\\' or c == "\x7f" for c in text):
        return text
    escaped = "".join(
        _ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c < " " or c == "\x7f" else c) for c in text
    )
    return f'"{escaped}"'


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    get_logger("celery_events_exporter").error(
        "uncaught exception", exc_info=(kind, value, traceback)
    )


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    thread = args.thread.name if args.thread is not None else "?"
    get_logger("celery_events_exporter").error(
        "thread ended by an exception",
        thread=thread,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )
