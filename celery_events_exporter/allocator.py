"""One malloc arena for the whole process (glibc).

The intake backlog and the task history's buffer share one byte budget (``intake/backlog.py``):
when the backlog needs the room, the history gives up its buffered messages. But the reader
thread allocates the backlog's messages and the ingest thread the history's, and glibc gives
each thread an arena of its own: memory freed in the ingest thread's arena cannot hold what the
reader reads next, so the process grew by both buffers' peaks, not by the budget. With one arena
what the history gives up is what the backlog reuses. The threads allocate under the
interpreter lock almost always, so one arena costs them no contention worth measuring
(bench/README.md, "One budget").
"""

from __future__ import annotations

import ctypes
import os
import platform

from celery_events_exporter.logging import get_logger

log = get_logger(__name__)

M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number for the arena limit (malloc.h)."""

ENV = "MALLOC_ARENA_MAX"
"""glibc's own environment variable: when it is set, the operator's choice stands."""


def one_arena() -> bool:
    """Limit glibc malloc to one arena, before the threads start; True if it was set. A
    ``MALLOC_ARENA_MAX`` in the environment stands, and other C libraries are left alone."""
    if ENV in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_ARENA_MAX, 1) != 1:
        log.warning("malloc arena limit not set")
        return False
    return True
