"""One malloc arena: a thread started after ``one_arena`` allocates in the main arena, as glibc's
own ``malloc_stats`` reports (a real process each, no mock)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's arenas"),
]

PROGRAM = """
import ctypes, sys, threading
from celery_events_exporter import allocator
print(allocator.one_arena(), flush=True)
kept = []
def allocate():
    kept.extend(bytes(4000) for _ in range(100))  # malloc'd (over pymalloc's 512 bytes)
threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.malloc_stats()  # to stderr: one "Arena N:" block per arena
"""


def _arenas(env: dict[str, str]) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip(), done.stderr.count("Arena ")


def test_threads_share_the_one_arena() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _arenas(env) == ("True", 1)


def test_without_it_glibc_gives_threads_arenas_of_their_own() -> None:
    """The counterpart: what the limit prevents (so the test above proves something)."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "8"}
    set_it, arenas = _arenas(env)
    assert set_it == "False"  # the operator's MALLOC_ARENA_MAX stands
    assert arenas > 1
