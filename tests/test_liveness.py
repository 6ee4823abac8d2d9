"""The rule that tells a quiet Redis connection from a frozen one (``PingWatch``), on a fake
clock; the real connections are in test_broker_outage.py and test_compat.py."""

from __future__ import annotations

import pytest

from celery_events_exporter.intake.liveness import PING_AFTER, PING_TIMEOUT, Liveness, PingWatch


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


def test_a_server_that_speaks_up_on_its_own_is_dead_after_both_delays() -> None:
    """AMQP's rule (``ask=None``): heartbeats come unasked, so a connection silent for
    ``quiet_after + answer_within`` seconds (two heartbeat intervals) is dead, to the check."""
    rule = Liveness(quiet_after=4.0, answer_within=4.0, ask=None, dead="silent", now=100.0)
    rule.check(107.9)
    rule.answered(107.9)  # a frame: the count starts again
    rule.check(115.9)  # exactly 8 s: still alive
    with pytest.raises(ConnectionError, match="silent"):
        rule.check(116.0)


def test_a_question_is_put_once_and_its_answer_clears_it() -> None:
    asked: list[float] = []
    clock = Clock()

    def ask() -> bool:
        asked.append(clock.now)
        return True

    rule = Liveness(quiet_after=2.0, answer_within=3.0, ask=ask, dead="gone", now=clock.now)
    for step in range(1, 11):  # 5 s of silence, checked every 0.5 s
        clock.now = 100.0 + step * 0.5
        rule.check(clock.now)
    assert asked == [102.5]
    rule.answered(105.0)
    clock.now = 107.5
    rule.check(clock.now)  # quiet again for 2.5 s: asked again
    assert asked == [102.5, 107.5]
    with pytest.raises(ConnectionError, match="gone"):
        rule.check(110.6)
