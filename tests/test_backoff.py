"""The reconnection delays: capped, jittered, exponential, starting over after a success."""

from __future__ import annotations

import pytest

from celery_events_exporter.intake.backoff import MAX_DELAY, Backoff


def test_delays_double_up_to_the_cap_and_start_over_after_a_reset() -> None:
    top = Backoff(initial=0.5, cap=5.0, uniform=lambda low, high: high)
    assert [top.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    top.reset()
    assert top.next() == 0.5
    bottom = Backoff(initial=0.5, cap=5.0, uniform=lambda low, high: low)
    assert [bottom.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.5, 2.5]


@pytest.mark.parametrize("seed", range(5))
def test_real_jitter_stays_between_half_the_step_and_the_step(seed: int) -> None:
    import random

    rng = random.Random(seed)
    backoff = Backoff(uniform=rng.uniform)
    delays = [backoff.next() for _ in range(50)]
    assert all(0.25 <= delay <= MAX_DELAY for delay in delays)
    assert len(set(delays)) == 50, "jittered: no two exporters retry in lockstep"
    assert all(delay >= MAX_DELAY / 2 for delay in delays[5:])
