"""The process's signals, handled in one place: SIGTERM and SIGINT stop the exporter, SIGHUP
is logged and ignored.

A signal handler runs on the main thread between two bytecodes; each one here only sets an
event or logs, and the threads it concerns act on it. A new signal (a reload, say) is one more
entry in ``install``.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from celery_events_exporter.logging import get_logger

log = get_logger(__name__)


def install(stop: threading.Event) -> None:
    """Handle SIGTERM and SIGINT by setting ``stop``: the supervision winds the threads down;
    SIGHUP only logs a line (``hang_up``)."""

    def shut_down(signum: int, frame: FrameType | None) -> None:
        log.info("shutting down", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    signal.signal(signal.SIGHUP, hang_up)


def hang_up(signum: int, frame: FrameType | None) -> None:
    """SIGHUP, which logrotate and terminals send, used to end the process (Python's default):
    the exporter logs to stderr and reads no file it could reload, so there is nothing to do."""
    log.info("SIGHUP ignored: logs go to stderr, nothing to reopen or reload")
