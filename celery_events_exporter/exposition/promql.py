"""PromQL over the catalogue's metrics: the one helper set of the dashboards and the rules.

Both generators (``grafana/generate.py`` and ``prometheus/generate_rules.py``) write their
queries with these functions, so a dashboard panel and the recording rule of the same figure
are the same expression, and a metric renamed in the catalogue fails generation in both.

It lives here, beside ``catalogue.py``, rather than in either generator's folder or a new
top-level package: the queries are the catalogue's other face (how its series are read), both
generators already import the installed ``exporter`` package (a script run from any folder
finds it, no ``sys.path`` juggling), and nothing in the exporter's own runtime imports it.

Every function returns PromQL text. Series names come from ``MetricSpec``s and label filters are
checked against the family's labels, so a typo raises here instead of matching nothing.

Replicas count once. Every exporter of a broker receives every event (the event exchange is a
fanout), so two exporters scraped in one job (an HA pair, a blue/green deploy) expose the same
fleet series twice, differing only in the target labels ``instance`` and ``pod``. The fleet
helpers (``fleet_gauge``, ``fleet_total``, ``fleet_change`` and everything built on them) take
``max without (instance, pod)`` of each series first, after ``rate()``/``increase()`` for
counters (a replica that restarted resets its own counters, which ``rate`` handles per series)
and before any ``sum``, so one exporter or several give the same numbers. ``max`` rather than
``avg``: a replica that started late, or lost its broker for a while, has seen fewer events, never
more. The exporter's own ``celery_exporter_*`` series describe one process each and are not
de-duplicated.

A selector narrows every series a generated query reads, the monitoring-mixins convention
(``job="celery-events-exporter"``, ``cluster="eu"``, ...): ``with_selector`` adds it to each
reference to a catalogue series (and Prometheus' ``up``) of a finished expression, so one
helper applies it to every rule, whichever helper above wrote the reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from celery_events_exporter.exposition.catalogue import Kind, MetricSpec, sample_names

REPLICA_LABELS = ("instance", "pod")
"""The labels in which two exporters of one broker, scraped in one job, differ."""
SELF_PREFIX = "celery_exporter_"
"""Families under this prefix describe an exporter process, not the Celery fleet."""

Filter = Mapping[str, str]
"""Label -> regex (often a Grafana variable reference), matched as ``label=~"regex"``."""

NO_FILTER: Filter = {}


def _sample(spec: MetricSpec, suffix: str) -> str:
    for name in spec.sample_names:
        if name.endswith(suffix):
            return name
    raise ValueError(f"{spec.name} exposes no series ending in {suffix!r}")


def counter(spec: MetricSpec) -> str:
    """The sample name of a counter family (``..._total``); other kinds raise ValueError."""
    if spec.kind is not Kind.COUNTER:
        raise ValueError(f"{spec.name} is a {spec.kind.value}, not a counter")
    return _sample(spec, "_total")


def gauge(spec: MetricSpec) -> str:
    """The sample name of a gauge family; other kinds raise ValueError."""
    if spec.kind is not Kind.GAUGE:
        raise ValueError(f"{spec.name} is a {spec.kind.value}, not a gauge")
    return spec.name


def histogram_part(spec: MetricSpec, part: str) -> str:
    """A histogram's ``bucket``, ``sum`` or ``count`` series name."""
    if spec.kind is not Kind.HISTOGRAM:
        raise ValueError(f"{spec.name} is a {spec.kind.value}, not a histogram")
    return _sample(spec, f"_{part}")


def require_label(spec: MetricSpec, label: str) -> str:
    """``label``, after checking the family carries it, so a dropped label fails generation."""
    if label not in spec.labels:
        raise ValueError(f"{spec.name} has no label {label!r}")
    return label


def select(sample: str, spec: MetricSpec, flt: Filter = NO_FILTER) -> str:
    """``sample{label=~"regex", ...}``; just ``sample`` without a filter."""
    unknown = set(flt) - set(spec.labels)
    if unknown:
        # A filter on a label the family lacks silently matches nothing when the regex is not
        # empty-matching; refuse it here.
        raise ValueError(f"{spec.name} has no label(s) {sorted(unknown)}")
    if not flt:
        return sample
    matchers = ", ".join(f'{label}=~"{ref}"' for label, ref in sorted(flt.items()))
    return f"{sample}{{{matchers}}}"


def by(op: str, labels: Sequence[str], inner: str) -> str:
    """``op by (labels) (inner)``; ``op(inner)`` when ``labels`` is empty."""
    if not labels:
        return f"{op}({inner})"
    return f"{op} by ({', '.join(labels)}) ({inner})"


def is_fleet(spec: MetricSpec) -> bool:
    """Whether ``spec`` describes the Celery fleet (every replica exports the same series)."""
    return not spec.name.startswith(SELF_PREFIX)


def one_replica(inner: str) -> str:
    """``inner`` with the replicas' copies of each series folded into one (their maximum)."""
    return f"max without ({', '.join(REPLICA_LABELS)}) ({inner})"


def _fleet(spec: MetricSpec) -> MetricSpec:
    if not is_fleet(spec):
        raise ValueError(f"{spec.name} is per exporter, not a fleet series: no de-duplication")
    return spec


def fleet_gauge(spec: MetricSpec, flt: Filter = NO_FILTER) -> str:
    """A fleet gauge, one series per label set however many exporters export it."""
    return one_replica(select(gauge(_fleet(spec)), spec, flt))


def fleet_total(spec: MetricSpec, flt: Filter = NO_FILTER) -> str:
    """A fleet counter's value since the exporter started, one series per label set."""
    return one_replica(select(counter(_fleet(spec)), spec, flt))


def fleet_change(sample: str, spec: MetricSpec, flt: Filter, fn: str, window: str) -> str:
    """``fn`` (``rate`` or ``increase``) of a fleet counter or histogram series over ``window``,
    then de-duplicated: ``max without (instance, pod) (rate(sample{...}[window]))``."""
    if fn not in ("rate", "increase"):
        raise ValueError(f"{fn!r} is neither rate nor increase")
    return one_replica(f"{fn}({select(sample, _fleet(spec), flt)}[{window}])")


def fleet_gauge_slope(spec: MetricSpec, flt: Filter, window: str) -> str:
    """How fast a fleet gauge moves, per second, over ``window`` (``deriv``), then
    de-duplicated like ``fleet_change``: each replica's slope, their maximum."""
    return one_replica(f"deriv({select(gauge(_fleet(spec)), spec, flt)}[{window}])")


def fleet_counter_change(spec: MetricSpec, flt: Filter, fn: str, window: str) -> str:
    """``fleet_change`` of a counter family's ``_total`` series."""
    return fleet_change(counter(spec), spec, flt, fn, window)


def rate(sample_selector: str, window: str) -> str:
    return f"rate({sample_selector}[{window}])"


def increase(sample_selector: str, window: str) -> str:
    return f"increase({sample_selector}[{window}])"


def zero_filled(summed: str, presence: str) -> str:
    """``summed``, or 0 for the groups that only ``presence`` has.

    A counter has no series until its first increment; Flower shows 0 there, not a blank.
    """
    return f"({summed} or 0 * {presence})"


def ratio(numerator: str, denominator: str) -> str:
    """Division that yields no sample, rather than NaN, where the denominator is 0."""
    return f"{numerator} / ({denominator} > 0)"


def quantile(
    q: float, spec: MetricSpec, flt: Filter, group: Sequence[str], fn: str, window: str
) -> str:
    """``histogram_quantile`` of ``fn`` (rate or increase) of the buckets, per ``group``."""
    buckets = fleet_change(histogram_part(spec, "bucket"), spec, flt, fn, window)
    return f"histogram_quantile({q:g}, {by('sum', [*group, 'le'], buckets)})"


def failure_ratio(
    failed: MetricSpec,
    succeeded: MetricSpec,
    flt: Filter,
    group: Sequence[str],
    fn: str,
    window: str,
) -> str:
    """failed / (failed + succeeded), per group; 0 (not missing) for groups with no failure."""
    return outcome_ratio(
        fleet_counter_change(failed, flt, fn, window),
        fleet_counter_change(succeeded, flt, fn, window),
        group,
    )


def outcome_ratio(failed_change: str, succeeded_change: str, group: Sequence[str]) -> str:
    """failed / (failed + succeeded) of two series' changes (``fleet_change``), summed per
    group; 0 (not missing) for groups with no failure, no value where nothing finished."""
    failed_sum = by("sum", group, failed_change)
    ok_sum = by("sum", group, succeeded_change)
    failed_filled = zero_filled(failed_sum, ok_sum)
    ok_filled = zero_filled(ok_sum, failed_sum)
    return ratio(failed_filled, f"{failed_filled} + {ok_filled}")


UP = "up"
"""Prometheus' own per-target series: 1 while the target's last scrape succeeded."""

_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\\n]|\\.)*)"\s*')
# One token of PromQL text: a quoted string (skipped whole), a name, or any other character.
_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`|[A-Za-z_:][A-Za-z0-9_:]*|.', re.S
)


def parse_selector(selector: str) -> tuple[tuple[str, str, str], ...]:
    """``selector`` (``label="value"`` matchers, comma-separated; ``=``, ``!=``, ``=~``,
    ``!~``; empty for none) as (label, operator, quoted value) triples; ValueError otherwise."""
    matchers: list[tuple[str, str, str]] = []
    text = selector.strip()
    position = 0
    while position < len(text):
        match = _MATCHER.match(text, position)
        if match is None:
            raise ValueError(
                f'not a label selector like job="celery" or cluster=~"eu.*": {selector!r}'
            )
        label, operator, value = match.groups()
        if label == "__name__":
            raise ValueError(f"a selector may not name the metric: {selector!r}")
        matchers.append((label, operator, f'"{value}"'))
        position = match.end()
        if position < len(text):
            if text[position] != ",":
                raise ValueError(f"matchers are separated by commas: {selector!r}")
            position += 1
    return tuple(matchers)


def selector_labels(selector: str) -> frozenset[str]:
    """The labels ``selector`` constrains."""
    return frozenset(label for label, _, _ in parse_selector(selector))


def with_selector(expr: str, selector: str, names: Iterable[str] | None = None) -> str:
    """``expr`` with ``selector``'s matchers first in every selection of a series in ``names``
    (default: every catalogue series and ``up``); ``expr`` itself when ``selector`` is empty.

    Recorded series (``level:metric:operation``) are not in ``names``: a recording rule reads
    its inputs through the selector and aggregates their labels away.
    """
    matchers = ", ".join(f"{label}{op}{value}" for label, op, value in parse_selector(selector))
    if not matchers:
        return expr
    wanted = frozenset(names) if names is not None else sample_names() | {UP}
    tokens = _TOKEN.findall(expr)
    out: list[str] = []
    depth = 0  # inside {...}: label names and values, never series
    for index, token in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
        elif depth == 0 and token in wanted and following != "(":
            if following == "{":  # its own matchers follow ours
                closing = tokens[index + 2] if index + 2 < len(tokens) else ""
                token += "{" + matchers + ("" if closing == "}" else ", ")
                tokens[index + 1] = ""
                depth += 1
            else:
                token += "{" + matchers + "}"
        out.append(token)
    return "".join(out)
