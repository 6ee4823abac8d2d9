"""The ``/metrics`` page in the text format (0.0.4) and OpenMetrics (1.0), which Prometheus 2.x asks
for first; the event families written straight from a snapshot.

prometheus-client builds a ``Sample`` per series and formats each one with generic code: at 50 k
series about 0.5 s in the text format and 0.9 s in OpenMetrics (its name escaping goes character by
character). So the event families are written here. Both formats write a series the same way and
differ only in the family headers and the closing ``# EOF``, so a series' lines are rendered once,
as bytes, and kept per key with the value(s) they show: between two scrapes many tasks and workers
saw nothing, and comparing a tuple of counts costs far less than formatting it again. The output is
byte-for-byte what prometheus-client writes for the same families in either format (a unit test
holds it to that); the process and runtime collectors, a few dozen series, still go through it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from itertools import accumulate
from typing import Generic, TypeVar, cast

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from exporter.exposition.catalogue import Kind, MetricSpec

LabelKey = tuple[str, ...]
K = TypeVar("K")

_go_float = cast(Callable[[float], str], floatToGoString)
_openmetrics_latest = cast(Callable[[Collector], bytes], openmetrics.generate_latest)

EOF = b"# EOF\n"
_INF = math.inf


class Format(enum.Enum):
    TEXT = "text"
    OPENMETRICS = "openmetrics"


def escape(value: str) -> str:
    """A label value as both formats quote it (prometheus-client's escaping)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def number(value: float) -> str:
    """``floatToGoString`` with shortcuts for the small whole numbers that counters mostly are and
    for floats below 1e6, which it writes as ``repr`` does (Go switches to exponent notation from
    1e6 on, so those take the general path)."""
    if type(value) is int and 0 <= value < 1_000_000:
        return f"{value}.0"
    if type(value) is float and -_INF < value < 1e6:
        return repr(value)
    return _go_float(value)


def header(spec: MetricSpec, fmt: Format) -> bytes:
    """The HELP and TYPE lines: the text format names a counter family after its ``_total``
    series, OpenMetrics after the family, and escapes quotes in the help too."""
    text = spec.help.replace("\\", r"\\").replace("\n", r"\n")
    if fmt is Format.TEXT:
        name = f"{spec.name}_total" if spec.kind is Kind.COUNTER else spec.name
    else:
        name, text = spec.name, text.replace('"', r"\"")
    return f"# HELP {name} {text}\n# TYPE {name} {spec.kind.value}\n".encode()


def label_text(names: tuple[str, ...], values: LabelKey) -> str:
    """A label set, sorted by name and escaped, without the braces."""
    pairs = sorted(zip(names, values, strict=True))
    return ",".join(f'{n}="{escape(v)}"' for n, v in pairs)


class SeriesCache(Generic[K]):
    """The rendered lines of one family's series, per key, with what they were rendered from.

    Concurrent scrapes share it: entries are replaced whole, never changed, so a reader sees an
    old entry or a new one, and either is checked against its own values before it is reused.
    """

    def __init__(self) -> None:
        self.counters: dict[K, tuple[bytes, float, bytes]] = {}
        """key -> (line up to the value, value, line)"""
        self.histograms: dict[K, tuple[str, bytes, tuple[int, ...], float, bytes]] = {}
        """key -> (label text, lines to fill in, per-bucket counts, sum, the series' lines)"""

    def prune(self, series: Mapping[K, object]) -> None:
        """Forget keys gone from ``series`` (purged workers): every key rendered is cached, so
        only then is the cache the larger."""
        for cache in (self.counters, self.histograms):
            if len(cache) > len(series):
                for key in [key for key in list(cache) if key not in series]:
                    cache.pop(key, None)


def counter(
    out: list[bytes],
    cache: SeriesCache[K],
    spec: MetricSpec,
    names: tuple[str, ...],
    series: Mapping[K, float],
    values: Callable[[K], LabelKey],
) -> None:
    """A counter or gauge family's series (``out`` has its header already)."""
    name = f"{spec.name}_total" if spec.kind is Kind.COUNTER else spec.name
    lines = cache.counters
    for key, value in series.items():
        entry = lines.get(key)
        if entry is None:
            labels = label_text(names, values(key))
            prefix = f"{name}{{{labels}}} ".encode() if labels else f"{name} ".encode()
        elif entry[1] == value:
            out.append(entry[2])
            continue
        else:
            prefix = entry[0]
        if type(value) is int and 0 <= value < 1_000_000:  # ``number``'s shortcut, in C
            line = b"%b%d.0\n" % (prefix, value)
        else:
            line = prefix + number(value).encode() + b"\n"
        lines[key] = (prefix, value, line)
        out.append(line)
    cache.prune(series)


def histogram(
    out: list[bytes],
    cache: SeriesCache[K],
    spec: MetricSpec,
    names: tuple[str, ...],
    series: tuple[Mapping[K, tuple[int, ...]], Mapping[K, float]],
    bounds: tuple[float, ...],
    values: Callable[[K], LabelKey],
) -> None:
    """A histogram family's series (``out`` has its header already), from its per-bucket counts and
    its sums per key."""
    blocks = cache.histograms
    le: list[str] = []
    histograms, sums = series
    for key, counts in histograms.items():
        total = sums[key]
        entry = blocks.get(key)
        if entry is None:
            le = le or _bucket_bounds(bounds)
            labels = label_text(names, values(key))
            template = _histogram_template(spec.name, le, labels)
        elif entry[2] == counts and entry[3] == total:
            out.append(entry[4])
            continue
        else:
            labels, template = entry[0], entry[1]
        block = _histogram_block(template, counts, total)
        if block is None:
            le = le or _bucket_bounds(bounds)
            block = _big_histogram_block(spec.name, le, labels, counts, total)
        blocks[key] = (labels, template, counts, total, block)
        out.append(block)
    cache.prune(histograms)


def _bucket_bounds(bounds: tuple[float, ...]) -> list[str]:
    return [*map(_go_float, bounds), "+Inf"]


def _histogram_template(name: str, le: list[str], labels: str) -> bytes:
    """A histogram's lines with ``%d`` for the cumulative counts and ``%r`` for the sum, filled in
    by one C-level ``%``: formatting ~20 lines one by one was most of a scrape's time."""
    labels = labels.replace("%", "%%")
    # "le" sorts before "task" and "worker": it leads every bucket's label set.
    lines = [f'{name}_bucket{{le="{bound}",{labels}}} %d.0\n' for bound in le]
    lines.append(f"{name}_count{{{labels}}} %d.0\n")
    lines.append(f"{name}_sum{{{labels}}} %r\n")
    return "".join(lines).encode()


def _histogram_block(template: bytes, counts: tuple[int, ...], total: float) -> bytes | None:
    """None from 1e6 on (observations or sum): Go writes those in exponent notation, where
    ``%d.0`` and ``repr`` do not."""
    cumulative = tuple(accumulate(counts))
    if cumulative[-1] >= 1_000_000 or type(total) is not float or not -_INF < total < 1e6:
        return None
    return template % (*cumulative, cumulative[-1], total)


def _big_histogram_block(
    name: str, le: list[str], labels: str, counts: tuple[int, ...], total: float
) -> bytes:
    lines = []
    running = 0
    for bound, count in zip(le, counts, strict=True):
        running += count
        lines.append(f'{name}_bucket{{le="{bound}",{labels}}} {number(running)}\n')
    lines.append(f"{name}_count{{{labels}}} {number(running)}\n")
    lines.append(f"{name}_sum{{{labels}}} {number(total)}\n")
    return "".join(lines).encode()


def generic(collector: Collector, fmt: Format) -> bytes:
    """``collector`` through prometheus-client, without the ``# EOF`` that ends a page."""
    if fmt is Format.TEXT:
        return generate_latest(collector)
    body = _openmetrics_latest(collector)
    assert body.endswith(EOF)
    return body[: -len(EOF)]


class FastExposition:
    """A collector that can write its own exposition (without ``# EOF``)."""

    def render(self, fmt: Format) -> list[bytes]:
        """The exposition in pieces: the page joins them once, 5 MB at 50 k series."""
        raise NotImplementedError


def generate(collectors: Iterable[Collector | FastExposition], fmt: Format) -> bytes:
    """The exposition of ``collectors`` in order: those that can render themselves do, the others
    go through prometheus-client."""
    parts: list[bytes] = []
    for collector in collectors:
        if isinstance(collector, FastExposition):
            parts += collector.render(fmt)
        else:
            parts.append(generic(collector, fmt))
    if fmt is Format.OPENMETRICS:
        parts.append(EOF)
    return b"".join(parts)


# OpenMetrics escaping schemes that leave the catalogue's names (all legacy Prometheus names) as
# they are: with these, prometheus-client writes what ``generate`` does.
_PLAIN_NAME_ESCAPINGS = frozenset({openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8})


def fast_format(encoder: Callable[[Collector], bytes]) -> Format | None:
    """The format ``generate`` writes exactly as ``encoder`` (from ``choose_encoder``) would, if
    any: the text format 0.0.4, and OpenMetrics 1.x."""
    if encoder is generate_latest:
        return Format.TEXT
    if (
        isinstance(encoder, partial)
        and encoder.func is openmetrics.generate_latest
        and encoder.keywords.get("escaping") in _PLAIN_NAME_ESCAPINGS
        and str(encoder.keywords.get("version", "")).startswith("1.")
    ):
        return Format.OPENMETRICS
    return None


class MetricsPage:
    """What ``/metrics`` serves: the event families, then the process and runtime ones, in the
    format content negotiation picks (prometheus-client's ``choose_encoder``)."""

    def __init__(self, events: Collector, others: Iterable[Collector]) -> None:
        """``events`` renders itself when it is a ``FastExposition``."""
        self.collectors: list[Collector] = [events, *others]
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in self.collectors:
            self.registry.register(collector)

    def render(self, accept_header: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept_header)
        fmt = fast_format(encoder)
        if fmt is None:  # a format or escaping only prometheus-client writes
            return encoder(self.registry), content_type
        return generate(self.collectors, fmt), content_type
