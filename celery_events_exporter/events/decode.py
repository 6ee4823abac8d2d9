"""Raw broker messages into events: kombu's virtual-transport envelope, its base64 body, the
JSON content types Celery's events come in, the events of a body. Pure functions; the decoder
thread (``celery_events_exporter.decoder``) calls them and hands the events to the state."""

from __future__ import annotations

from binascii import Error as Base64Error
from binascii import a2b_base64
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import orjson

from celery_events_exporter.events.body import loads
from celery_events_exporter.events.schema import task_events
from celery_events_exporter.logging import get_logger

log = get_logger(__name__)

JSON_CONTENT_TYPES = frozenset({"application/json", None, ""})


def _strict_base64() -> Callable[[str | bytes], bytes]:
    """A SIMD base64 decoder when pybase64 is installed (30x faster than binascii on kombu's
    Redis bodies), else binascii; either rejects input kombu would not have written."""
    try:
        import pybase64
    except ImportError:
        return lambda data: a2b_base64(data, strict_mode=True)
    return lambda data: pybase64.b64decode(data, validate=True)


_b64decode_strict = _strict_base64()


def b64decode(data: str | bytes) -> bytes:
    """Decode a base64 body exactly as kombu does (``base64.b64decode``, which skips characters
    outside the alphabet); the strict decoder handles what kombu writes, the lenient one the
    rest."""
    try:
        return _b64decode_strict(data)
    except (Base64Error, ValueError):
        return a2b_base64(data)


class _Properties(msgspec.Struct, gc=False):
    body_encoding: str | None = None


class _Envelope(msgspec.Struct, gc=False, rename={"content_type": "content-type"}):
    """What ``open_envelope`` reads of an envelope, of the types kombu writes."""

    body: str
    content_type: str | None = None
    properties: _Properties | None = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)

_EnvelopeFields = tuple[str | None, Any, Any]
"""(content type, body, body encoding) as an envelope holds them."""


def open_envelope(raw: bytes | str) -> tuple[str | None, bytes | str]:
    """(content type, body) of a kombu virtual-transport envelope, as kombu's ``Message`` reads
    them: the body is base64 when ``properties.body_encoding`` says so (kombu's Redis default).

    Raises ``ValueError``/``TypeError``/``KeyError`` on an envelope kombu could not read either.
    """
    content_type, body, encoding = _envelope_fields(raw) or _envelope_fields_in_full(raw)
    if encoding == "base64":
        body = b64decode(body)
    elif encoding is not None:
        raise ValueError(f"unknown body_encoding {encoding!r}")
    if not isinstance(body, (str, bytes)):
        raise TypeError(f"body is a {type(body).__name__}")
    return content_type, body


def _envelope_fields(raw: bytes | str) -> _EnvelopeFields | None:
    """The fields of an envelope as kombu writes it (ASCII JSON, the fields of their types),
    read without its headers and delivery properties; None for any other: read in full.
    ASCII: the schema decoder does not check the UTF-8 of what it skips, which orjson
    refuses."""
    if not raw.isascii():
        return None
    try:
        envelope = _envelope_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    properties = envelope.properties
    encoding = None if properties is None else properties.body_encoding
    return envelope.content_type, envelope.body, encoding


def _envelope_fields_in_full(raw: bytes | str) -> _EnvelopeFields:
    envelope = orjson.loads(raw)
    if type(envelope) is not dict:
        raise TypeError(f"envelope is a {type(envelope).__name__}")
    body = envelope["body"]
    properties = envelope.get("properties") or {}
    if type(properties) is not dict:
        raise TypeError(f"properties is a {type(properties).__name__}")
    content_type = envelope.get("content-type")
    encoding = properties.get("body_encoding")
    return (content_type if isinstance(content_type, str) else None), body, encoding


def decode_events(body: bytes | str) -> Sequence[Any]:
    """The events of a message's JSON body, in its order: ``TaskEvent`` objects when the schema
    decoder reads every one of them (``schema.task_events``: task events, of which only the
    fields the state reads), else the JSON as ``body.loads`` reads it, event by event, for the
    state to check (prefork workers batch task events in a list, routing key task.multi; any
    other value is one event). Raises ``ValueError`` on a body that is not JSON."""
    events = task_events(body)
    if events is not None:
        return events
    payload = loads(body)
    return payload if type(payload) is list else (payload,)
