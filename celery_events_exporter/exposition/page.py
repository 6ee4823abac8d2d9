"""What ``/metrics`` serves: the event families, written by
``celery_events_exporter.exposition.writer``, then
the process and runtime families (prometheus-client's own collectors, a few dozen series), in
the format the scraper's ``Accept`` header picks
(``celery_events_exporter.exposition.negotiation``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, cast

from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from celery_events_exporter.exposition import negotiation
from celery_events_exporter.exposition.writer import Format

EOF = b"# EOF\n"

_openmetrics_latest = cast(Callable[[Collector], bytes], openmetrics.generate_latest)


class Renders(Protocol):
    """A source of families that writes its own exposition."""

    def render(self, fmt: Format) -> list[bytes]:
        """The families in ``fmt``, in pieces (the page joins them once: 5 MB at 50 k series),
        without the ``# EOF`` that ends an OpenMetrics page."""
        ...


def generic(collector: Collector, fmt: Format) -> bytes:
    """``collector`` through prometheus-client, without the ``# EOF`` that ends a page."""
    if fmt is Format.TEXT:
        return generate_latest(collector)
    body = _openmetrics_latest(collector)
    assert body.endswith(EOF)
    return body[: -len(EOF)]


class MetricsPage:
    """The whole ``/metrics`` body: ``events`` first, then ``others``."""

    def __init__(self, events: Renders, others: Iterable[Collector]) -> None:
        self.events = events
        self.others = list(others)

    def generate(self, fmt: Format) -> bytes:
        """The page in ``fmt``."""
        parts = self.events.render(fmt)
        parts += [generic(collector, fmt) for collector in self.others]
        if fmt is Format.OPENMETRICS:
            parts.append(EOF)
        return b"".join(parts)

    def render(self, accept_header: str) -> tuple[bytes, str]:
        """The page for a request with this ``Accept`` header, and its Content-Type."""
        choice = negotiation.choose(accept_header)
        return self.generate(choice.format), choice.content_type
