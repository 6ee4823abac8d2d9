"""PromQL text for the dashboards.

Every series name comes from a catalogue spec (``exporter.exposition.catalogue``), so a
renamed metric fails here at generation time instead of leaving an empty panel in production.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from exporter.exposition.catalogue import Kind, MetricSpec

# Grafana macros; tests substitute them before parsing.
RATE_WINDOW = "$__rate_interval"
RANGE_WINDOW = "$__range"

Filter = Mapping[str, str]
"""Label -> Grafana variable reference, matched as a regex (``label=~"$var"``)."""


def _sample(spec: MetricSpec, suffix: str) -> str:
    for name in spec.sample_names:
        if name.endswith(suffix):
            return name
    raise ValueError(f"{spec.name} exposes no series ending in {suffix!r}")


def counter(spec: MetricSpec) -> str:
    if spec.kind is not Kind.COUNTER:
        raise ValueError(f"{spec.name} is a {spec.kind.value}, not a counter")
    return _sample(spec, "_total")


def gauge(spec: MetricSpec) -> str:
    if spec.kind is not Kind.GAUGE:
        raise ValueError(f"{spec.name} is a {spec.kind.value}, not a gauge")
    return spec.name


def histogram_part(spec: MetricSpec, part: str) -> str:
    """``part`` is ``bucket``, ``sum`` or ``count``."""
    if spec.kind is not Kind.HISTOGRAM:
        raise ValueError(f"{spec.name} is a {spec.kind.value}, not a histogram")
    return _sample(spec, f"_{part}")


def select(sample: str, spec: MetricSpec, flt: Filter) -> str:
    unknown = set(flt) - set(spec.labels)
    if unknown:
        # A filter on a label the family lacks silently matches nothing when the regex is not
        # empty-matching; refuse it here.
        raise ValueError(f"{spec.name} has no label(s) {sorted(unknown)}")
    matchers = ", ".join(f'{label}=~"{ref}"' for label, ref in sorted(flt.items()))
    return f"{sample}{{{matchers}}}"


def by(op: str, labels: Sequence[str], inner: str) -> str:
    if not labels:
        return f"{op}({inner})"
    return f"{op} by ({', '.join(labels)}) ({inner})"


def rate(sample_selector: str, window: str = RATE_WINDOW) -> str:
    return f"rate({sample_selector}[{window}])"


def increase(sample_selector: str, window: str = RANGE_WINDOW) -> str:
    return f"increase({sample_selector}[{window}])"


def quantile(
    q: float, spec: MetricSpec, flt: Filter, group: Sequence[str], fn: str, window: str
) -> str:
    """``histogram_quantile`` of ``fn`` (rate or increase) of the buckets, per ``group``."""
    buckets = f"{fn}({select(histogram_part(spec, 'bucket'), spec, flt)}[{window}])"
    return f"histogram_quantile({q}, {by('sum', [*group, 'le'], buckets)})"


def zero_filled(summed: str, presence: str) -> str:
    """``summed``, or 0 for the groups that only ``presence`` has.

    A counter has no series until its first increment; Flower shows 0 there, not a blank.
    """
    return f"({summed} or 0 * {presence})"


def ratio(numerator: str, denominator: str) -> str:
    """Division that yields no sample, rather than NaN, where the denominator is 0."""
    return f"{numerator} / ({denominator} > 0)"


def failure_ratio(
    failed: MetricSpec,
    succeeded: MetricSpec,
    flt: Filter,
    group: Sequence[str],
    fn: str,
    window: str,
) -> str:
    """failed / (failed + succeeded), per group; 0 (not missing) for groups with no failure."""
    failed_sum = by("sum", group, f"{fn}({select(counter(failed), failed, flt)}[{window}])")
    ok_sum = by("sum", group, f"{fn}({select(counter(succeeded), succeeded, flt)}[{window}])")
    failed_filled = zero_filled(failed_sum, ok_sum)
    ok_filled = zero_filled(ok_sum, failed_sum)
    return ratio(failed_filled, f"{failed_filled} + {ok_filled}")
