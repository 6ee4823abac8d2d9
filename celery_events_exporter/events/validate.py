"""The one check of a decoded event: is it something the exporter can count or file?

The schema decoder (``schema.py``) makes the same check of the common message's task events as
it decodes them, and leaves any message it does not pass to the full read; the state's counting
applies ``validate`` to every event decoded in full, on the ingest thread. What the state hands
its subscribers has passed it. A failed check raises ``Rejected``, whose ``reason`` becomes the
label of ``celery_exporter_events_rejected_total``.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

from celery_events_exporter.events.vocabulary import TASK_STATE_EVENTS

NOT_AN_OBJECT = "not_an_object"
MISSING_TYPE = "missing_type"
MISSING_HOSTNAME = "missing_hostname"
MISSING_UUID = "missing_uuid"
INVALID_FIELD = "invalid_field"

_NEEDS_UUID = frozenset(TASK_STATE_EVENTS)

MAX_UUID_LENGTH = 128
"""Characters of a task uuid kept (Celery's are 36): the state's task ledger keys up to
100 000 tasks by it, so a longer, crafted one is cut rather than kept whole (two uuids
alike in their first 128 characters are then one task)."""


class Rejected(Exception):
    """An event that cannot be used; ``reason`` becomes the rejection metric's label.

    ``event_type`` is set when the event had a usable type and hostname (it still counts as an
    event of that type, like any event that arrived).
    """

    def __init__(self, reason: str, detail: str = "", event_type: str | None = None) -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.event_type = event_type


def validate(event: Any) -> tuple[str, str, str]:
    """(type, hostname, uuid) of a usable event; uuid is "" for an event without one that needs
    none (worker events, custom events, a task-sent without uuid).

    Raises ``Rejected``: not a JSON object, no type or hostname (non-empty strings), or a task
    state event without uuid. Runs once per event on the ingest thread: plain checks, no
    allocation but the result.
    """
    if type(event) is dict:
        try:  # subscripts: the common case, a complete event, costs no method call
            event_type = event["type"]
            hostname = event["hostname"]
            uuid = event["uuid"]
        except KeyError:
            event_type = event.get("type")
            hostname = event.get("hostname")
            uuid = event.get("uuid")
    elif isinstance(event, dict):
        event_type = event.get("type")
        hostname = event.get("hostname")
        uuid = event.get("uuid")
    else:
        raise Rejected(NOT_AN_OBJECT, f"event is a {type(event).__name__}")
    if (type(event_type) is not str and not isinstance(event_type, str)) or not event_type:
        raise Rejected(MISSING_TYPE)
    if (type(hostname) is not str and not isinstance(hostname, str)) or not hostname:
        raise Rejected(MISSING_HOSTNAME, f"{event_type} without hostname")
    if (type(uuid) is not str and not isinstance(uuid, str)) or not uuid:
        if event_type in _NEEDS_UUID:
            raise Rejected(MISSING_UUID, f"{event_type} without uuid", event_type)
        return event_type, hostname, ""
    if len(uuid) > MAX_UUID_LENGTH:
        uuid = uuid[:MAX_UUID_LENGTH]
    return event_type, hostname, uuid


def is_number(value: Any) -> TypeGuard[float]:
    """A usable numeric field: a finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
