"""The recording and alert rules as data, one module per concern (the order of ``CONCERNS``
is the order of the groups in the rule files)."""

from __future__ import annotations

from collections.abc import Callable

from . import exporter, queues, tasks, workers
from .settings import Settings
from .spec import Group

CONCERNS: tuple[Callable[[Settings], Group], ...] = (
    workers.group,
    tasks.group,
    queues.group,
    exporter.group,
)


def groups(settings: Settings) -> list[Group]:
    """Every concern's rules made with ``settings``."""
    return [make(settings) for make in CONCERNS]
