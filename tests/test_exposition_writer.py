"""The writer's families, held byte for byte to what prometheus-client writes for the same series
in both formats, on any label values and numbers, through the per-series caches."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.utils import floatToGoString

from celery_events_exporter.exposition import writer
from celery_events_exporter.exposition.catalogue import Kind, MetricSpec
from celery_events_exporter.exposition.writer import (
    CounterLine,
    Format,
    HistogramBlock,
    LabelKey,
    SeriesCache,
    number,
)
from tests.exposition_oracle import Families, counter_family, histogram_family, reference

EXAMPLES = settings(max_examples=150, deadline=None)

# What label values can hold once decoded from JSON: anything but lone surrogates.
label_values = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12) | st.sampled_from(
    ['"', "\\", "\n", '\\"', "\\n", "%d", "%%s", "ünïcode", "名前", "😀", ""]
)
label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True).filter(
    lambda name: not name.startswith("__")
)
values = (
    st.integers(min_value=-(10**15), max_value=10**15)
    | st.floats(allow_nan=False)
    | st.sampled_from([0, 999_999, 1_000_000, 999_999.5, 1e6, 1e-7, -0.0, math.inf, -math.inf])
)
help_texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30) | st.sampled_from(
    ['quote " here', "back\\slash", "new\nline", 'all \\ " \n of them']
)


def _ours(fmt: Format, spec: MetricSpec, lines: list[bytes]) -> bytes:
    """Our family as a whole page would end in OpenMetrics."""
    page = b"".join([writer.header(spec, fmt), *lines])
    return page + b"# EOF\n" if fmt is Format.OPENMETRICS else page


def _write_counter(
    fmt: Format,
    cache: SeriesCache[LabelKey],
    spec: MetricSpec,
    names: tuple[str, ...],
    series: dict[LabelKey, float],
) -> bytes:
    lines: list[bytes] = []
    writer.counter(lines, cache, spec, names, series, lambda key: key)
    return _ours(fmt, spec, lines)


@st.composite
def counter_families(
    draw: st.DrawFn,
) -> tuple[MetricSpec, tuple[str, ...], dict[LabelKey, float]]:
    kind = draw(st.sampled_from([Kind.COUNTER, Kind.GAUGE]))
    names = tuple(draw(st.lists(label_names, unique=True, max_size=4)))
    series = draw(st.dictionaries(st.tuples(*[label_values] * len(names)), values, max_size=6))
    spec = MetricSpec("test_family", kind, draw(help_texts), names)
    return spec, names, series


@pytest.mark.parametrize("fmt", list(Format))
@EXAMPLES
@given(family=counter_families(), changed=st.data())
def test_counters_and_gauges_match_prometheus_client(
    fmt: Format,
    family: tuple[MetricSpec, tuple[str, ...], dict[LabelKey, float]],
    changed: st.DataObject,
) -> None:
    spec, names, series = family
    cache: SeriesCache[LabelKey] = SeriesCache()
    expected = reference(Families([counter_family(spec, names, series)]), fmt)
    assert _write_counter(fmt, cache, spec, names, series) == expected
    assert _write_counter(fmt, cache, spec, names, series) == expected  # from the cache
    # Between scrapes some series change value and some go away.
    later = {
        key: changed.draw(values) if changed.draw(st.booleans()) else value
        for key, value in series.items()
        if changed.draw(st.booleans())
    }
    expected = reference(Families([counter_family(spec, names, later)]), fmt)
    assert _write_counter(fmt, cache, spec, names, later) == expected
    assert set(cache.counters) == set(later)


@st.composite
def histogram_families(
    draw: st.DrawFn,
) -> tuple[tuple[float, ...], dict[LabelKey, tuple[int, ...]], dict[LabelKey, float]]:
    # As --runtime-buckets takes them: positive, finite, increasing, at least one.
    bound = st.floats(min_value=0, exclude_min=True, allow_infinity=False)
    bounds = tuple(sorted(draw(st.lists(bound, unique=True, min_size=1, max_size=6))))
    counts = st.tuples(*[st.integers(0, 2_000_000) | st.just(0)] * (len(bounds) + 1))
    keys = st.tuples(label_values, label_values)
    histograms: dict[LabelKey, tuple[int, ...]] = draw(st.dictionaries(keys, counts, max_size=4))
    totals = st.floats(allow_nan=False) | st.integers(0, 10**9)
    sums: dict[LabelKey, float] = {key: draw(totals) for key in histograms}
    return bounds, histograms, sums


RUNTIME = MetricSpec("test_seconds", Kind.HISTOGRAM, "Test histogram.", ("task", "worker"))


def _write_histogram(
    fmt: Format,
    cache: SeriesCache[LabelKey],
    bounds: tuple[float, ...],
    histograms: dict[LabelKey, tuple[int, ...]],
    sums: dict[LabelKey, float],
) -> bytes:
    lines: list[bytes] = []
    names = RUNTIME.labels
    writer.histogram(lines, cache, RUNTIME, names, (histograms, sums), bounds, lambda key: key)
    return _ours(fmt, RUNTIME, lines)


@pytest.mark.parametrize("fmt", list(Format))
@EXAMPLES
@given(family=histogram_families(), later=st.data())
def test_histograms_match_prometheus_client(
    fmt: Format,
    family: tuple[tuple[float, ...], dict[LabelKey, tuple[int, ...]], dict[LabelKey, float]],
    later: st.DataObject,
) -> None:
    """Bucket bounds as prometheus-client's own histograms write them, counts and sums from 1e6
    on (Go's exponent notation) as well as below."""
    bounds, histograms, sums = family
    cache: SeriesCache[LabelKey] = SeriesCache()

    def expected() -> bytes:
        family = histogram_family(RUNTIME, RUNTIME.labels, histograms, sums, bounds)
        return reference(Families([family]), fmt)

    assert _write_histogram(fmt, cache, bounds, histograms, sums) == expected()
    assert _write_histogram(fmt, cache, bounds, histograms, sums) == expected()
    for key, counts in list(histograms.items()):
        if later.draw(st.booleans(), label=f"observe {key}"):
            grown = later.draw(st.sampled_from(range(len(counts))), label="bucket")
            histograms[key] = tuple(c + (i == grown) for i, c in enumerate(counts))
            sums[key] = sums[key] + later.draw(st.floats(0, 1e7), label="observed")
    assert _write_histogram(fmt, cache, bounds, histograms, sums) == expected()


@pytest.mark.parametrize("fmt", list(Format))
@pytest.mark.parametrize("kind", list(Kind))
def test_an_empty_family_is_its_header_alone(fmt: Format, kind: Kind) -> None:
    spec = MetricSpec("test_empty", kind, "Nothing yet.", ("task",))
    if kind is Kind.HISTOGRAM:
        family = histogram_family(spec, spec.labels, {}, {}, (1.0,))
    else:
        family = counter_family(spec, spec.labels, {})
    assert _ours(fmt, spec, []) == reference(Families([family]), fmt)


def test_the_cache_keeps_named_entries_and_reuses_a_line_until_its_value_changes() -> None:
    spec = MetricSpec("jobs", Kind.COUNTER, "Jobs.", ("task",))
    cache: SeriesCache[LabelKey] = SeriesCache()
    _write_counter(Format.TEXT, cache, spec, spec.labels, {("a",): 3})
    entry = cache.counters[("a",)]
    assert entry == CounterLine(b'jobs_total{task="a"} ', (3, b'jobs_total{task="a"} 3.0\n'))
    first = entry.shown
    _write_counter(Format.TEXT, cache, spec, spec.labels, {("a",): 3})
    assert cache.counters[("a",)].shown is first
    _write_counter(Format.TEXT, cache, spec, spec.labels, {("a",): 4})
    assert cache.counters[("a",)] is entry  # the label set is escaped once per key
    assert entry.shown == (4, b'jobs_total{task="a"} 4.0\n')


@pytest.mark.parametrize(("before", "after"), [(0, -0.0), (-0.0, 0.0), (0.0, 0)])
def test_a_zero_is_rewritten_when_its_sign_changes(before: float, after: float) -> None:
    spec = MetricSpec("level", Kind.GAUGE, "Level.")
    cache: SeriesCache[LabelKey] = SeriesCache()
    _write_counter(Format.TEXT, cache, spec, (), {(): before})
    kept = cache.counters[()].shown
    assert _write_counter(Format.TEXT, cache, spec, (), {(): after}).endswith(
        b"\nlevel %s\n" % number(after).encode()
    )
    assert (cache.counters[()].shown is kept) == (str(float(before)) == str(float(after)))


def test_the_cache_keeps_a_histogram_block_with_what_it_shows() -> None:
    cache: SeriesCache[LabelKey] = SeriesCache()
    _write_histogram(Format.TEXT, cache, (1.0,), {("t", "w"): (2, 1)}, {("t", "w"): 2.5})
    entry = cache.histograms[("t", "w")]
    assert isinstance(entry, HistogramBlock)
    counts, total, block = entry.shown
    assert (entry.labels, counts, total) == ('task="t",worker="w"', (2, 1), 2.5)
    assert block == (
        b'test_seconds_bucket{le="1.0",task="t",worker="w"} 2.0\n'
        b'test_seconds_bucket{le="+Inf",task="t",worker="w"} 3.0\n'
        b'test_seconds_count{task="t",worker="w"} 3.0\n'
        b'test_seconds_sum{task="t",worker="w"} 2.5\n'
    )


@pytest.mark.parametrize(
    "value",
    [0, 1, 999_999, 1_000_000, 12_345_678, -3, 0.5, 1e-7, 999_999.5, 1e6, 2.5e9, -0.25,
     math.inf, -math.inf, math.nan],
)  # fmt: skip
def test_number_matches_prometheus_client(value: float) -> None:
    assert number(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


@EXAMPLES
@given(value=values | st.floats())
def test_number_matches_prometheus_client_on_any_value(value: float) -> None:
    assert number(value) == floatToGoString(value)  # type: ignore[no-untyped-call]
