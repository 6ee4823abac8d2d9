"""The event families' series in the text format (0.0.4) and OpenMetrics (1.0), which Prometheus 2.x
asks for first, written straight from a snapshot.

prometheus-client builds a ``Sample`` per series and formats each one with generic code: at 50 k
series about 0.5 s in the text format and 0.9 s in OpenMetrics (its name escaping goes character by
character). So the event families are written here. Both formats write a series the same way and
differ only in the family headers and the closing ``# EOF``, so a series' lines are rendered once,
as bytes, and kept per key with the value(s) they show: between two scrapes many tasks and workers
saw nothing, and comparing a tuple of counts costs far less than formatting it again. The output is
byte-for-byte what prometheus-client writes for the same families in either format (the tests hold
it to that, prometheus-client's writers being their oracle: ``tests/exposition_oracle.py``); the
process and runtime collectors, a few dozen series, still go through prometheus-client
(``celery_events_exporter.exposition.page``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from math import copysign
from typing import Generic, TypeVar, cast

from prometheus_client.utils import floatToGoString

from celery_events_exporter.exposition.catalogue import Kind, MetricSpec

LabelKey = tuple[str, ...]
K = TypeVar("K")

_go_float = cast(Callable[[float], str], floatToGoString)

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


class _Zero(float):
    """A zero as a cache entry remembers it: equal only to a zero of the same sign, because 0 and
    -0.0 are equal but written differently. A subclass, so that only the comparisons with a cached
    zero pay for the sign check, not every cached series."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return other == 0.0 and copysign(1.0, other) == copysign(1.0, self)

    __hash__ = float.__hash__


@dataclass(slots=True)
class CounterLine:
    """A counter's or gauge's series: made once per key, with what it last showed."""

    prefix: bytes
    """The line up to the value: name, label set and the separating space."""
    shown: tuple[float, bytes]
    """(value, line): the value last written and its whole line. Swapped for a new pair when the
    value changes, never changed in place (see ``SeriesCache``)."""


@dataclass(slots=True)
class HistogramBlock:
    """A histogram's series (its buckets, count and sum): made once per key, with what it last
    showed."""

    labels: str
    """The label set, escaped, without braces and without ``le``."""
    template: bytes
    """The block's lines with the numbers left to fill in (``_histogram_template``)."""
    shown: tuple[tuple[int, ...], float, bytes]
    """(per-bucket counts, sum, block): the counts (not cumulative) and the sum last written and
    the block's lines. Swapped whole, like ``CounterLine.shown``."""


class SeriesCache(Generic[K]):
    """The written lines of one family's series, per key, with what they were written from.

    Concurrent scrapes share it. An entry's ``shown`` is swapped whole (one attribute store), so
    a reader that reads it once sees one consistent old or new value-and-lines, and checks it
    against its own values before reusing it. The entries themselves stay: a new object per
    changed series would be one more object for the garbage collector to track until it changes
    again, where a tuple of bytes and numbers is untracked.
    """

    def __init__(self) -> None:
        self.counters: dict[K, CounterLine] = {}
        self.histograms: dict[K, HistogramBlock] = {}

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
    get, append = lines.get, out.append
    for key, value in series.items():
        entry = get(key)
        if entry is not None:
            written, line = entry.shown
            if written == value:
                append(line)
                continue
            prefix = entry.prefix
        else:
            labels = label_text(names, values(key))
            prefix = f"{name}{{{labels}}} ".encode() if labels else f"{name} ".encode()
        if type(value) is int and 0 <= value < 1_000_000:  # ``number``'s shortcut, in C
            line = b"%b%d.0\n" % (prefix, value)
        else:
            line = prefix + number(value).encode() + b"\n"
        shown = (value if value else _Zero(value), line)
        if entry is None:
            lines[key] = CounterLine(prefix, shown)
        else:
            entry.shown = shown
        append(line)
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
        if entry is not None:
            written_counts, written_total, block = entry.shown
            if written_counts == counts and written_total == total:
                out.append(block)
                continue
            labels, template = entry.labels, entry.template
        else:
            le = le or _bucket_bounds(bounds)
            labels = label_text(names, values(key))
            template = _histogram_template(spec.name, le, labels)
        cumulative = (*accumulate(counts),)
        last = cumulative[-1]
        # Go writes 1e6 and more (observations or sum) in exponent notation, where ``%d.0`` and
        # ``repr`` do not.
        if last < 1_000_000 and type(total) is float and -_INF < total < 1e6:
            block = template % (*cumulative, last, total)
        else:
            le = le or _bucket_bounds(bounds)
            block = _big_histogram_block(spec.name, le, labels, counts, total)
        shown = (counts, total, block)
        if entry is None:
            blocks[key] = HistogramBlock(labels, template, shown)
        else:
            entry.shown = shown
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
