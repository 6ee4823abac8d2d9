"""Event bodies as Celery's receivers read them."""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(body: bytes | str) -> Any:
    """Parse an event body as Celery's receivers do: orjson first; what it refuses goes through
    the stdlib ``json``, which kombu's serializer is, and which reads the ``NaN``, ``Infinity``
    and ``-Infinity`` that kombu's writer emits for non-finite floats. So one NaN does not cost
    a ``task.multi`` batch its other events: the fields that must be finite are checked where
    they are used. Raises ``ValueError`` on a body neither reads."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)
