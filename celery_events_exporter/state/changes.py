"""What the task ledger hands its subscribers: one change for each task event it applied."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TaskChange:
    """A task event the ledger applied, with what the ledger knows of its task."""

    uuid: str
    type: str
    timestamp: float
    event: Mapping[str, Any]
    """The event as decoded and validated: every field the worker or the client sent."""
    name: str | None
    """The task's name as the ledger knows it: the event's own, or an earlier event's."""
    worker: str | None
    """The hostname of the worker the task was received by, as the ledger knows it."""


TaskChangeSink = Callable[[Sequence[TaskChange]], None]
"""Called by the state once per applied batch, on the ingest thread, after the state's lock is
released, with the batch's task changes in the order they were applied. A sink must be quick
(append to a bounded buffer of its own) and must not call back into the state."""
