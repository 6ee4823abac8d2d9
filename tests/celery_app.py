"""The Celery app the end-to-end tests run in real worker processes.

Its broker comes from TEST_BROKER_URL, so one app serves the Redis and the RabbitMQ runs.
"""

from __future__ import annotations

import os
import time

from celery import Celery, Task
from celery.exceptions import Reject

app = Celery("tests", broker=os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/15"))
app.conf.update(
    task_send_sent_event=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="tests.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="tests.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(name="tests.flaky", bind=True, max_retries=5)
def flaky(self: Task, fail_times: int) -> int:
    if self.request.retries < fail_times:
        raise self.retry(countdown=0.1)
    return int(self.request.retries)


@app.task(name="tests.reject", bind=True, acks_late=True)
def reject(self: Task) -> None:
    raise Reject("not today", requeue=False)


@app.task(name="tests.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
