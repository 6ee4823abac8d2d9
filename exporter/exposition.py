"""Prometheus text format (0.0.4) for the event families, written straight from a snapshot.

prometheus-client builds a ``Sample`` per series and formats each one with generic code: about
1 µs per series, 50 ms for 50 k series. The task families are where the series are (a histogram
costs ~20 per task and worker), so they are written here with their label sets escaped once per
key; the output is byte-for-byte what ``prometheus_client.generate_latest`` writes for the same
families (a unit test holds it to that). OpenMetrics still goes through prometheus-client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar, cast

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from exporter.metrics import Kind, MetricSpec
from exporter.state import Histogram

LabelKey = tuple[str, ...]
K = TypeVar("K")

_go_float = cast(Callable[[float], str], floatToGoString)


def escape(value: str) -> str:
    """A label value as the text format quotes it (prometheus-client's escaping)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def number(value: float) -> str:
    """``floatToGoString`` with a shortcut for the small whole numbers that counters mostly are
    (Go switches to exponent notation from 1e6 on, so those take the general path)."""
    if type(value) is int and 0 <= value < 1_000_000:
        return f"{value}.0"
    return _go_float(value)


def _help(spec: MetricSpec, kind: str, name: str) -> str:
    text = spec.help.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {text}\n# TYPE {name} {kind}\n"


class LabelCache:
    """Rendered, sorted, escaped label sets per key; keeps only the keys of the last render."""

    def __init__(self) -> None:
        self._old: dict[tuple[LabelKey, tuple[str, ...]], str] = {}
        self._new: dict[tuple[LabelKey, tuple[str, ...]], str] = {}

    def labels(self, names: tuple[str, ...], values: LabelKey) -> str:
        key = (values, names)
        text = self._new.get(key)
        if text is None:
            text = self._old.get(key)
            if text is None:
                pairs = sorted(zip(names, values, strict=True))
                text = ",".join(f'{n}="{escape(v)}"' for n, v in pairs)
            self._new[key] = text
        return text

    def rotate(self) -> None:
        self._old, self._new = self._new, {}


def counter(
    out: list[str],
    cache: LabelCache,
    spec: MetricSpec,
    names: tuple[str, ...],
    series: Mapping[K, int],
    values: Callable[[K], LabelKey],
) -> None:
    name = f"{spec.name}_total" if spec.kind is Kind.COUNTER else spec.name
    out.append(_help(spec, spec.kind.value, name))
    labels = cache.labels
    for key, count in series.items():
        out.append(f"{name}{{{labels(names, values(key))}}} {number(count)}\n")


def histogram(
    out: list[str],
    cache: LabelCache,
    spec: MetricSpec,
    names: tuple[str, ...],
    series: Mapping[K, Histogram],
    bounds: tuple[float, ...],
    values: Callable[[K], LabelKey],
) -> None:
    name = spec.name
    out.append(_help(spec, "histogram", name))
    # "le" sorts before "task" and "worker": it leads every bucket's label set.
    le = [f'{name}_bucket{{le="{_go_float(b)}",' for b in bounds]
    le.append(f'{name}_bucket{{le="+Inf",')
    labels = cache.labels
    for key, hist in series.items():
        text = labels(names, values(key))
        running = 0
        for prefix, count in zip(le, hist.counts, strict=True):
            running += count
            out.append(f"{prefix}{text}}} {number(running)}\n")
        out.append(f"{name}_count{{{text}}} {number(running)}\n")
        out.append(f"{name}_sum{{{text}}} {number(hist.total)}\n")


def generate_text(collectors: Iterable[Collector | FastText]) -> bytes:
    """The text exposition of ``collectors`` in order: those with ``render_text`` render
    themselves, the others go through ``prometheus_client.generate_latest``."""
    parts: list[bytes] = []
    for collector in collectors:
        if isinstance(collector, FastText):
            parts.append(collector.render_text().encode())
        else:
            parts.append(generate_latest(collector))
    return b"".join(parts)


class FastText:
    """A collector that can write its own text exposition."""

    def render_text(self) -> str:
        raise NotImplementedError


class MetricsPage:
    """What ``/metrics`` serves: the event families, then the process and runtime ones.

    Text format goes through ``generate_text`` (the fast path for the event families);
    OpenMetrics, asked for by content negotiation, through prometheus-client.
    """

    def __init__(self, events: Collector, others: Iterable[Collector]) -> None:
        """``events`` renders its own text when it is a ``FastText``."""
        self.collectors: list[Collector] = [events, *others]
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in self.collectors:
            self.registry.register(collector)

    def render(self, accept_header: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept_header)
        if encoder is generate_latest:
            return generate_text(self.collectors), content_type
        return encoder(self.registry), content_type
