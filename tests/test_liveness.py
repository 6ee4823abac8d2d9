"""The rule that tells a quiet Redis connection from a frozen one (``PingWatch``), on a fake
clock; the real connections are in test_broker_outage.py and test_compat.py."""

from __future__ import annotations

import pytest

from celery_events_exporter.intake.liveness import PING_AFTER, PING_TIMEOUT, PingWatch


class FakeServer:
    """Counts the PINGs sent and answers them when told to."""

    def __init__(self, subscribed: bool = True) -> None:
        self.subscribed = subscribed
        self.sent = 0
        self.unanswered = 0

    def ping(self) -> bool:
        if not self.subscribed:
            return False
        self.sent += 1
        self.unanswered += 1
        return True

    def answer(self) -> None:
        self.unanswered = 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watch(server: FakeServer, clock: Clock) -> PingWatch:
    return PingWatch(server.ping, lambda: server.unanswered, clock=clock)


def test_the_defaults_are_the_fast_paths() -> None:
    assert (PING_AFTER, PING_TIMEOUT) == (2.0, 3.0)


def test_a_quiet_connection_that_answers_is_pinged_every_few_seconds_and_kept() -> None:
    server, clock = FakeServer(), Clock()
    w = watch(server, clock)
    for _ in range(60):  # 30 s without a single event, checked every 0.5 s
        clock.now += 0.5
        w.check(0)
        server.answer()
    # The PONG is seen at the next check, 2 s of silence later the next PING: at 2.5 s, 5.5 s,
    # ... 29.5 s, and never an error.
    assert server.sent == 10


def test_no_ping_while_messages_come() -> None:
    server, clock = FakeServer(), Clock()
    w = watch(server, clock)
    for received in range(1, 101):
        clock.now += 0.5
        w.check(received)
    assert server.sent == 0


def test_an_unanswered_ping_gives_up_after_the_timeout() -> None:
    server, clock = FakeServer(), Clock()
    w = watch(server, clock)
    clock.now += 2.5
    w.check(0)
    assert server.sent == 1
    clock.now += 3.0
    w.check(0)  # exactly 3 s: still waiting
    clock.now += 0.5
    with pytest.raises(ConnectionError, match="no answer to PING within 3 s"):
        w.check(0)
    assert server.sent == 1  # one PING, not one per check


def test_messages_behind_which_the_pong_waits_keep_the_connection() -> None:
    """A slow reader: the PONG is queued behind messages still being read."""
    server, clock = FakeServer(), Clock()
    w = watch(server, clock)
    clock.now += 2.5
    w.check(0)
    for received in range(1, 21):  # 10 s of messages, the PONG never read
        clock.now += 0.5
        w.check(received)
    assert server.sent == 1
    clock.now += 3.5  # then silence: 3 s after the last message, the server is gone
    with pytest.raises(ConnectionError):
        w.check(20)


def test_a_connection_not_subscribed_yet_is_not_pinged() -> None:
    server, clock = FakeServer(subscribed=False), Clock()
    w = watch(server, clock)
    for _ in range(20):
        clock.now += 0.5
        w.check(0)  # never raises: there was nothing to ask
    assert server.sent == 0
    server.subscribed = True
    clock.now += 0.5
    w.check(0)
    assert server.sent == 1
