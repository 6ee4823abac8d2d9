"""The garbage collector as the exporter runs it (``app.settle``): young generations collected as
CPython does by default, full collections rare while buffers of long-lived containers grow. A
real interpreter each, as the exporter's own process would be."""

from __future__ import annotations

import subprocess
import sys

import pytest

from celery_events_exporter.app import FULL_COLLECTION_EVERY

pytestmark = pytest.mark.unit

PROGRAM = """
import gc, sys
from celery_events_exporter.app import settle
if sys.argv[1] == "settled":
    settle()
full = 0
def count(phase, info):
    global full
    if phase == "start" and info["generation"] == 2:
        full += 1
gc.callbacks.append(count)
buffered = [[i, str(i)] for i in range(300_000)]  # a buffer filling: containers, no cycle
print(gc.get_threshold(), full)
"""


def _run(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_a_growing_buffer_sets_off_no_full_collection_once_settled() -> None:
    thresholds, full = _run("default").rsplit(" ", 1)
    # CPython's own: four full collections here (3.11), each walking the whole buffer.
    assert (thresholds, int(full) >= 3) == ("(700, 10, 10)", True)
    assert _run("settled") == f"(700, 10, {FULL_COLLECTION_EVERY}) 0"
