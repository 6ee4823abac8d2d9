"""Why a broker call failed (``celery_events_exporter.broker_errors``): the reason labels, and a
TLS URL against a plain server named as a TLS mismatch, against a real plain redis-server and
the machine's plain RabbitMQ."""

from __future__ import annotations

import ssl
import time

import pytest
from kombu import Connection
from kombu.exceptions import OperationalError

from celery_events_exporter.broker_errors import ERROR_REASONS, error_reason, tls_mismatch
from testkit.ports import free_port
from tests.conftest import ExporterProcess, PrivateRedis, Processes, wait_until


def _raised_while_handling(inner: BaseException, outer: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException:
            raise outer  # noqa: B904 (the context is the point: redis-py raises so)
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (TimeoutError("Timeout connecting to server"), "timeout"),
        (ConnectionRefusedError(111, "Connection refused"), "connection"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "tls"),
        # redis-py turns the SSL error into its own ConnectionError while handling it.
        (_raised_while_handling(ssl.SSLError(1, "x"), ConnectionError("Error 1")), "tls"),
        (_raised_while_handling(OSError("x"), ValueError("y")), "other"),
        (ValueError("nonsense"), "other"),
    ],
)
def test_reasons(exc: BaseException, reason: str) -> None:
    assert error_reason(exc) == reason
    assert reason in ERROR_REASONS


def test_kombu_wrapped_errors_are_looked_through() -> None:
    try:
        try:
            raise ssl.SSLError(1, "[SSL] record layer failure")
        except ssl.SSLError as inner:
            raise OperationalError("wrapped") from inner
    except OperationalError as exc:
        assert error_reason(exc) == "tls"


@pytest.mark.integration
def test_a_plain_redis_answers_the_tls_question(private_redis: PrivateRedis) -> None:
    private_redis.start()
    mismatch = tls_mismatch(
        Connection(f"rediss://127.0.0.1:{private_redis.port}/0"), TimeoutError("Timeout")
    )
    assert mismatch is not None
    assert mismatch.startswith(f"TLS mismatch: 127.0.0.1:{private_redis.port} answers in plain")
    # The same timeout from a port where nothing answers is no TLS mismatch...
    nobody = Connection(f"rediss://127.0.0.1:{free_port()}/0")
    assert tls_mismatch(nobody, TimeoutError("Timeout")) is None
    # ...and a plain URL never is one.
    plain = Connection(f"redis://127.0.0.1:{private_redis.port}/0")
    assert tls_mismatch(plain, TimeoutError("Timeout")) is None


def tls_errors(exporter: ExporterProcess) -> dict[str, float]:
    return exporter.metrics("celery_exporter_broker_connection_errors").by_label(
        "celery_exporter_broker_connection_errors_total", "reason"
    )


@pytest.mark.parametrize("listed", [False, True], ids=["alone", "first-of-a-list"])
def test_rediss_against_a_plain_redis_is_named_a_tls_mismatch(
    private_redis: PrivateRedis, processes: Processes, listed: bool
) -> None:
    """Alone, or first of a failover list whose last URL is refused: the error that ends the
    attempt is then the refusal, and the TLS mismatch must still be named."""
    private_redis.start()
    url = f"rediss://127.0.0.1:{private_redis.port}/0"
    if listed:
        url += f";redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    exporter = processes.exporter(url, wait_connected=False)
    errors = wait_until(
        lambda: tls_errors(exporter)["tls"] >= 1 and tls_errors(exporter),
        timeout=40,
        what="a TLS error counted",
    )
    took = time.monotonic() - started
    assert errors == {"timeout": 0.0, "connection": 0.0, "auth": 0.0, "tls": 1.0, "other": 0.0}
    assert took < 15  # one connection attempt (redis-py's 5 s timeout), then the question
    log = exporter.log()
    assert f"TLS mismatch: 127.0.0.1:{private_redis.port} answers in plain text" in log
    assert '"reason": "tls"' in log
    assert exporter.get("/readyz").status_code == 503  # not ready, still serving
    assert exporter.get("/metrics").status_code == 200


def test_amqps_against_a_plain_rabbitmq_is_named_a_tls_mismatch(processes: Processes) -> None:
    exporter = processes.exporter("amqps://guest:guest@127.0.0.1:5672//", wait_connected=False)
    errors = wait_until(
        lambda: tls_errors(exporter)["tls"] >= 1 and tls_errors(exporter),
        timeout=40,
        what="a TLS error counted",
    )
    assert errors == {"timeout": 0.0, "connection": 0.0, "auth": 0.0, "tls": 1.0, "other": 0.0}
    assert "TLS mismatch: 127.0.0.1:5672 answers in plain text" in exporter.log()
