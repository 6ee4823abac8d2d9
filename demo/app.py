"""The demo Celery application, configured entirely from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping

from celery import Celery

DEFAULT_BROKER_URL = "redis://localhost:6379/0"


def create_app(environ: Mapping[str, str] | None = None) -> Celery:
    env = os.environ if environ is None else environ
    app = Celery("demo", include=["demo.tasks"])
    backend = env.get("CELERY_RESULT_BACKEND") or None
    app.conf.update(
        broker_url=env.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL),
        result_backend=backend,
        # The exporter lives on the event stream: turn it on here so a worker
        # started without -E (or a client) still publishes everything.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_default_queue=env.get("DEMO_QUEUE", "celery"),
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # One task at a time per process keeps the slow blur from hoarding
        # quick tasks behind it, as a real image service would configure it.
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        broker_connection_retry_on_startup=True,
        result_expires=3600,
    )
    return app


app = create_app()
