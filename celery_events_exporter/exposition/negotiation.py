"""Which format ``/metrics`` answers in, from the scraper's ``Accept`` header.

Two formats are written (``celery_events_exporter.exposition.writer``): OpenMetrics 1.0.0, for a
scraper that
names it, and the text format 0.0.4 for everyone else (browsers, curl, older scrapers). The
choice follows the header's q-values (RFC 9110, section 12.5.1): each format takes the weight of
the most specific range that matches it, and OpenMetrics wins when its weight is positive and at
least the text format's, so a scraper that lists both at one weight gets the richer one. Ranges
for what is not written here (protobuf, OpenMetrics 0.0.1 or 2.x, text 1.0.0, name escapings
that rewrite names) match neither format; a header that matches neither still gets the text
format, as prometheus-client and client_golang answer it, rather than a 406 a scraper would
record as a failed scrape.

The Content-Type strings are prometheus-client's, byte for byte: a request that names a version
is answered with the escaping scheme echoed (``underscores`` unless it asked for
``allow-utf-8``), one that does not is answered without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from celery_events_exporter.exposition.writer import Format

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

OPENMETRICS = "application/openmetrics-text"
OPENMETRICS_VERSION = "1.0.0"
UNDERSCORES = "underscores"
ALLOW_UTF8 = "allow-utf-8"
# Escapings that change a legacy metric name (every name in the catalogue is one): a scraper that
# asks for them wants names written differently, which only prometheus-client's writer does.
_RENAMING_ESCAPINGS = frozenset({"dots", "values"})
_TEXT_VERSION = "0.0.4"


@dataclass(frozen=True, slots=True)
class Choice:
    """The format to write and the Content-Type that says so."""

    format: Format
    content_type: str


TEXT = Choice(Format.TEXT, TEXT_CONTENT_TYPE)


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an ``Accept`` header: ``type/subtype`` with its parameters, lower-cased
    (values as sent), and its weight."""

    type: str
    subtype: str
    params: dict[str, str]
    q: float

    @property
    def specificity(self) -> tuple[int, int, int]:
        """RFC 9110: a range with a concrete type, then subtype, then more parameters is the more
        specific, and its weight is the one that counts."""
        return (self.type != "*", self.subtype != "*", len(self.params))


def parse_accept(header: str) -> list[MediaRange]:
    """The media ranges of ``header`` in order; malformed elements are skipped, a malformed or
    out-of-range q-value reads as 0 (not acceptable)."""
    ranges = []
    for element in header.split(","):
        media_type, *raw_params = element.split(";")
        kind, slash, subtype = media_type.strip().lower().partition("/")
        if not slash or not kind or not subtype:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for raw in raw_params:
            name, equals, value = raw.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if not equals or not name:
                continue
            if name == "q":
                q = _weight(value)
            else:
                params[name] = value
        ranges.append(MediaRange(kind, subtype.strip(), params, q))
    return ranges


def _weight(value: str) -> float:
    try:
        q = float(value)
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0


def _weight_of(ranges: list[MediaRange]) -> float:
    """The weight the most specific of ``ranges`` gives (the highest among equally specific)."""
    if not ranges:
        return 0.0
    top = max(r.specificity for r in ranges)
    return max(r.q for r in ranges if r.specificity == top)


def _is_openmetrics(r: MediaRange) -> bool:
    """A range naming OpenMetrics 1.0.0 (or no version) with an escaping that keeps the names."""
    version = r.params.get("version", OPENMETRICS_VERSION)
    return (
        f"{r.type}/{r.subtype}" == OPENMETRICS
        and version == OPENMETRICS_VERSION
        and r.params.get("escaping") not in _RENAMING_ESCAPINGS
    )


def _is_text(r: MediaRange) -> bool:
    """A range matching the text format 0.0.4: ``text/plain`` (version 0.0.4 or none),
    ``text/*`` or ``*/*``."""
    if r.type == "*":
        return r.subtype == "*"
    if r.type != "text":
        return False
    return r.subtype == "*" or (
        r.subtype == "plain" and r.params.get("version", _TEXT_VERSION) == _TEXT_VERSION
    )


@lru_cache(maxsize=16)
def choose(accept: str) -> Choice:
    """The format ``/metrics`` answers a request carrying ``Accept: accept`` in. Cached: a
    Prometheus server sends the same header with every scrape."""
    ranges = parse_accept(accept)
    openmetrics = [r for r in ranges if _is_openmetrics(r)]
    q_openmetrics = _weight_of(openmetrics)
    if q_openmetrics <= 0.0 or q_openmetrics < _weight_of([r for r in ranges if _is_text(r)]):
        return TEXT
    # The content type echoes the range that won, as prometheus-client does.
    top = max(r.specificity for r in openmetrics)
    chosen = next(r for r in openmetrics if r.specificity == top and r.q == q_openmetrics)
    if "version" not in chosen.params:
        return Choice(Format.OPENMETRICS, OPENMETRICS_CONTENT_TYPE)
    escaping = ALLOW_UTF8 if chosen.params.get("escaping") == ALLOW_UTF8 else UNDERSCORES
    return Choice(Format.OPENMETRICS, f"{OPENMETRICS_CONTENT_TYPE}; escaping={escaping}")
