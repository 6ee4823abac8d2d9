"""What an intake reader hands on: one broker message, undecoded."""

from __future__ import annotations

from dataclasses import dataclass

INVALID_ENVELOPE = "invalid_envelope"
"""The rejection reason of a message whose envelope cannot be read: by the decoder (the Redis
fast path's envelopes) or by kombu (its own path)."""


@dataclass(frozen=True, slots=True)
class RawMessage:
    received_at: float
    """When the reader took the message off the socket (exporter's clock)."""
    content_type: str | None
    body: bytes | str
    enveloped: bool = False
    """``body`` is a kombu virtual-transport envelope (the Redis fast path): JSON holding the
    message's ``body``, ``content-type`` and ``properties.body_encoding``. Opened here, on the
    ingest thread, so that the reader only moves bytes."""
