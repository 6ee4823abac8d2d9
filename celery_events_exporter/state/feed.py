"""The task changes of one applied batch, as the state hands them to its subscribers.

The counting loop files each change as a tuple (``counting.RawChange``); a ``TaskChange`` is
made only when a subscriber reads it. The recent-task store keeps batches unread until someone
asks for the Tasks view, so on a busy fleet most changes are never made into objects: an object
per task event cost the ingest thread as much as counting the event (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

from celery_events_exporter.state.changes import TaskChange
from celery_events_exporter.state.counting import UNKNOWN_TASK, RawChange


def _made(raw: RawChange) -> TaskChange:
    uuid, event_type, timestamp, event, name, worker = raw
    return TaskChange(
        uuid, event_type, timestamp, event, None if name == UNKNOWN_TASK else name, worker
    )


class ChangeBatch(Sequence[TaskChange]):
    """A batch's task changes in the order they were applied. ``timestamp`` is when the
    exporter received the event (its clock); ``size`` is the bytes of JSON the changes came
    from, for a subscriber's memory bound."""

    __slots__ = ("_raw", "size")

    def __init__(self, raw: list[RawChange], size: int) -> None:
        self._raw = raw
        self.size = size

    def __len__(self) -> int:
        return len(self._raw)

    @overload
    def __getitem__(self, index: int) -> TaskChange: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[TaskChange]: ...

    def __getitem__(self, index: int | slice) -> TaskChange | Sequence[TaskChange]:
        if isinstance(index, slice):
            return [_made(raw) for raw in self._raw[index]]
        return _made(self._raw[index])

    def __iter__(self) -> Iterator[TaskChange]:
        return map(_made, self._raw)
