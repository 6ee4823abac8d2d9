"""celery_events_exporter.logging's helpers that are pure logic."""

from __future__ import annotations

import pytest

from celery_events_exporter.logging import sparse

pytestmark = pytest.mark.unit


def test_a_repeated_problem_is_logged_at_its_powers_of_two() -> None:
    assert [n for n in range(1, 1100) if sparse(n)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def test_a_flood_of_a_million_logs_twenty_lines() -> None:
    assert sum(sparse(n) for n in range(1, 1_000_001)) == 20
