"""A catalogue entry's family as prometheus-client builds it, for the stages' own collectors
(the decoder's, the broker status', the recent-task store's): a few series each, rendered by
``page.generic`` after the event families."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from celery_events_exporter.exposition.catalogue import Kind, MetricSpec


def family(spec: MetricSpec, series: Mapping[tuple[str, ...], float]) -> Metric:
    """``spec``'s family holding ``series`` ({label values: value}, in the spec's label order)."""
    made: CounterMetricFamily | GaugeMetricFamily
    if spec.kind is Kind.COUNTER:
        made = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    else:
        made = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
    for values, value in series.items():
        made.add_metric(list(values), value)
    return made
