"""The process's signals, handled in one place: SIGTERM and SIGINT stop the exporter.

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
    """Handle SIGTERM and SIGINT by setting ``stop``: the supervision winds the threads down."""

    def shut_down(signum: int, frame: FrameType | None) -> None:
        log.info("shutting down", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
