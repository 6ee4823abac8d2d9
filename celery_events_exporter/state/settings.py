"""What the state is told at start-up: histogram buckets, labels, liveness and bounds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StateSettings:
    runtime_buckets: tuple[float, ...]
    queue_wait_buckets: tuple[float, ...]
    worker_label: bool = True
    worker_timeout: float = 0.0
    purge_offline_worker_after: float = 0.0
    max_tracked_tasks: int = 100_000
    max_exception_classes: int = 50
    purge_stopped_worker_after: float = 0.0
    max_registered_tasks: int = 200
    max_task_names: int = 1000
    max_workers: int = 1000
    max_queues: int = 500
    max_label_length: int = 200
