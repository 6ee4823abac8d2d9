"""The Celery app the end-to-end tests run in real worker processes.

Its broker comes from TEST_BROKER_URL, so one app serves the Redis and the RabbitMQ runs;
TEST_EVENT_EXCHANGE, when set, is its event_exchange (an app with its own event settings).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery, Task
from celery.exceptions import Reject
from kombu import Queue

app = Celery("tests", broker=os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/15"))
app.conf.update(
    task_send_sent_event=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
# Queue tests run workers with the broker layout under test (global_keyprefix, priority steps)
# and with queues declared as the test's client declares them (x-max-priority).
if os.environ.get("TEST_BROKER_TRANSPORT_OPTIONS"):
    app.conf.broker_transport_options = json.loads(os.environ["TEST_BROKER_TRANSPORT_OPTIONS"])
if os.environ.get("TEST_PRIORITY_QUEUES"):
    app.conf.task_queues = [
        Queue(name, queue_arguments={"x-max-priority": 10})
        for name in os.environ["TEST_PRIORITY_QUEUES"].split(",")
    ]
if os.environ.get("TEST_PREFETCH_MULTIPLIER"):
    app.conf.worker_prefetch_multiplier = int(os.environ["TEST_PREFETCH_MULTIPLIER"])
if os.environ.get("TEST_EVENT_EXCHANGE"):
    app.conf.event_exchange = os.environ["TEST_EVENT_EXCHANGE"]


_F = TypeVar("_F", bound=Callable[..., Any])


def task(name: str, **options: Any) -> Callable[[_F], _F]:
    """app.task, typed: Celery's decorator is untyped."""
    decorator: Callable[[_F], _F] = app.task(name=name, **options)
    return decorator


@task("tests.add")
def add(x: int, y: int) -> int:
    return x + y


@task("tests.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@task("tests.flaky", bind=True, max_retries=5)
def flaky(self: Task, fail_times: int) -> int:
    if self.request.retries < fail_times:
        raise self.retry(countdown=0.1)
    return int(self.request.retries)


@task("tests.flaky_exc", bind=True, max_retries=5)
def flaky_exc(self: Task, fail_times: int) -> int:
    """Retries on an exception, then succeeds."""
    if self.request.retries < fail_times:
        raise self.retry(exc=OSError("flaky disk"), countdown=0.1)
    return int(self.request.retries)


@task("tests.reject", bind=True, acks_late=True)
def reject(self: Task) -> None:
    raise Reject("not today", requeue=False)


@task("tests.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task("tests.image")
def image(
    input_image: dict[str, str],
    output_image: dict[str, str],
    lifespan: int,
    api_token: str = "",
) -> dict[str, Any]:
    """Shaped like the seed's blurit.image: file references in, the same plus timings out; the
    token lets tests check that secrets are masked in kwargs and in the result."""
    if lifespan <= 0:
        raise ValueError(f"lifespan must be positive, got {lifespan}")
    return {
        "input_image": input_image,
        "output_image": output_image,
        "chronos": {"total": 0.01},
        "access_token": api_token,
    }
