"""Task events as the state reads them, decoded from a message's JSON without the rest.

The state's counting reads eight fields of a task event; the others (args, kwargs, result,
traceback...) are for the Tasks view and the task history, which decode the event again from
the message's body when they read its change (``state/feed.py``). ``task_events`` builds only
those eight, with a schema decoder (msgspec), for a message whose every event is a task event
that passes the check ``validate`` makes: a type of ``TASK_EVENTS``, a non-empty hostname and a
non-empty uuid of at most ``MAX_UUID_LENGTH`` characters. For any other message (a worker event,
a custom event, a malformed one, non-ASCII JSON) it returns None, and the decoder reads the
message in full (``body.loads``), so that everything else meets the checks, rejections and
metrics it always met.

The schema accepts a message only where ``body.loads`` would read the same values: the JSON
must be ASCII (the schema decoder does not check the UTF-8 of the fields it skips, which
``loads`` refuses), and a number it keeps must be one that orjson reads as the same int or float
(orjson reads an integer beyond 64 bits as a float).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from celery_events_exporter.events.validate import MAX_UUID_LENGTH
from celery_events_exporter.events.vocabulary import TASK_EVENTS

if TYPE_CHECKING:
    _TaskEventType = str
    _Number = int | float | None
else:
    # Literal strings come out of the decoder as the vocabulary's own objects.
    _TaskEventType = Literal[TASK_EVENTS]
    _Number = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | float | None

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
_Uuid = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_UUID_LENGTH)]


class TaskEvent(msgspec.Struct, kw_only=True, gc=False):
    """The fields of a task event that the state reads; its type, hostname and uuid checked as
    ``validate`` checks them.

    Made by ``task_events`` from JSON (every field of the type declared), or by ``from_dict``
    from an event decoded in full and validated (the other fields as they came). A field the
    event does not carry is None (the state reads a present null the same way). The fields are
    in the order Celery writes them: the decoder looks a key up from where the previous one
    matched. Not tracked by the garbage collector: it holds JSON values, which never refer back
    to it.
    """

    hostname: _NonEmpty
    uuid: _Uuid
    name: str | None = None
    exception: str | None = None
    runtime: _Number = None
    timestamp: _Number = None
    type: _TaskEventType
    queue: str | None = None


_decoder = msgspec.json.Decoder(list[TaskEvent] | TaskEvent)


def task_events(body: bytes | str) -> list[TaskEvent] | None:
    """The events of a message's JSON body when all of them are task events the state can
    count as they are (see the module doc), in the message's order; else None: the message is
    to be read in full."""
    if not body.isascii():
        return None
    try:
        decoded = _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    return decoded if isinstance(decoded, list) else [decoded]


def from_dict(event: dict[str, Any], event_type: str, hostname: str, uuid: str) -> TaskEvent:
    """The ``TaskEvent`` of a task event decoded in full, whose type, hostname and uuid
    ``validate`` returned."""
    get = event.get
    return TaskEvent(
        hostname=hostname,
        uuid=uuid,
        name=get("name"),
        exception=get("exception"),
        runtime=get("runtime"),
        timestamp=get("timestamp"),
        type=event_type,
        queue=get("queue"),
    )
