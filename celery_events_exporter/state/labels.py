"""Label values as the state admits them: cut to a length in bytes, and capped in number.

A label value comes from whoever publishes events, so its length and the number of distinct
values are the publisher's choice: 100 k distinct task names made 4.1 M series, a 10 kB hostname
a 10 kB label value. Every value of the task series' ``task`` and ``worker`` labels, the
exception class and task-sent's ``queue`` passes through here when it first makes a series:
cut to ``max_length`` bytes of UTF-8 (ending in ``CUT_MARK``), and past the cap of distinct
values counted as ``OTHER``. Each fold or cut is counted in ``overflow``, per (label, reason),
the source of ``celery_exporter_label_overflow_total``.
"""

from __future__ import annotations

OTHER = "other"
"""The label value that stands for every value past a cardinality cap."""

CUT_MARK = "…"
"""Ends a value cut to the length cap (3 bytes of UTF-8, counted within the cap)."""

CAP = "cap"
"""Overflow reason: the value was counted as ``OTHER`` because its label's cap was reached."""
LENGTH = "length"
"""Overflow reason: the value was cut to the length cap."""
REASONS = (CAP, LENGTH)

TASK = "task"
WORKER = "worker"
EXCEPTION = "exception"
QUEUE = "queue"
LABELS = (TASK, WORKER, EXCEPTION, QUEUE)
"""The labels whose values are admitted here (the ``label`` label of the overflow metric)."""

MIN_LENGTH = 16
"""The shortest length cap accepted (the marker takes 3 bytes)."""

_FREE = frozenset({OTHER, "unknown"})
"""Values that take no place under a cap: what stands for many (``OTHER``) or for a name the
exporter never saw ("unknown", the state's ``UNKNOWN_TASK``)."""


def cut(value: str, max_length: int) -> str:
    """``value`` if its UTF-8 is at most ``max_length`` bytes, else its longest prefix that fits
    with ``CUT_MARK`` after it (never half a character)."""
    if len(value) <= max_length and value.isascii():
        return value
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_length:
        return value
    keep = encoded[: max_length - len(CUT_MARK.encode())]
    return keep.decode("utf-8", "ignore") + CUT_MARK


def fits(value: str, max_length: int) -> bool:
    """Whether ``value`` needs no cut: the cheap test the counting loop makes first."""
    return len(value) <= max_length and value.isascii()


class LabelCaps:
    """The admitted values of each capped label, and the overflow counts.

    Not thread-safe: the state's lock covers it. ``"unknown"`` and ``OTHER`` themselves take no
    place under a cap.
    """

    def __init__(
        self, *, max_task_names: int, max_workers: int, max_queues: int, max_length: int
    ) -> None:
        self.max_length = max_length
        self._limits = {TASK: max_task_names, WORKER: max_workers, QUEUE: max_queues}
        self.admitted: dict[str, set[str]] = {TASK: set(), WORKER: set(), QUEUE: set()}
        self.overflow: dict[tuple[str, str], int] = {
            (label, reason): 0 for label in LABELS for reason in REASONS
        }
        """(label, reason) -> how many times a value was folded (``CAP``) or cut (``LENGTH``);
        every pair from 0, so that an alert sees the first one."""

    def cut(self, label: str, value: str) -> str:
        """``value`` cut to the length cap, the cut counted."""
        if fits(value, self.max_length):
            return value
        short = cut(value, self.max_length)
        if short is not value:
            self.overflow[(label, LENGTH)] += 1
        return short

    def admit(self, label: str, value: str) -> str | None:
        """``value`` (already cut) if it has, or gets, a place under ``label``'s cap; None, the
        fold counted, when the cap is reached."""
        admitted = self.admitted[label]
        if value in admitted or value in _FREE:
            return value
        if len(admitted) < self._limits[label]:
            admitted.add(value)
            return value
        self.overflow[(label, CAP)] += 1
        return None

    def label(self, label: str, value: str) -> str:
        """``value`` cut and admitted, or ``OTHER``."""
        admitted = self.admit(label, self.cut(label, value))
        return OTHER if admitted is None else admitted

    def release(self, label: str, value: str) -> None:
        """Free ``value``'s place under ``label``'s cap (a purged worker, a task name no series
        is left under)."""
        self.admitted[label].discard(value)

    def keep_only(self, label: str, in_use: set[str]) -> None:
        """Free the places of ``label``'s values that are not ``in_use``."""
        self.admitted[label] &= in_use
