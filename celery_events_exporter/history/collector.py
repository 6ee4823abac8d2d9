"""The task history's self-metrics (``celery_exporter_task_history_*``), read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from celery_events_exporter.exposition import catalogue as m
from celery_events_exporter.history.writer import DROP_REASONS, HistoryWriter


class HistoryCollector(Collector):
    def __init__(self, writer: HistoryWriter) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        stats = self.writer.stats
        for spec, value in (
            (m.EXPORTER_TASK_HISTORY_ROWS_WRITTEN, stats.rows_written),
            (m.EXPORTER_TASK_HISTORY_BATCHES, stats.batches),
            (m.EXPORTER_TASK_HISTORY_WRITE_ERRORS, stats.write_errors),
            (m.EXPORTER_TASK_HISTORY_ROWS_EXPIRED, stats.rows_expired),
        ):
            counter = CounterMetricFamily(spec.name, spec.help)
            counter.add_metric([], value)
            yield counter
        spec = m.EXPORTER_TASK_HISTORY_DROPPED
        counter = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
        for reason in DROP_REASONS:
            counter.add_metric([reason], stats.dropped[reason])
        yield counter
        spec = m.EXPORTER_TASK_HISTORY_BUFFER_BYTES
        gauge = GaugeMetricFamily(spec.name, spec.help)
        gauge.add_metric([], self.writer.buffer_bytes)
        yield gauge
        if stats.last_success is not None:
            spec = m.EXPORTER_TASK_HISTORY_LAST_SUCCESS
            gauge = GaugeMetricFamily(spec.name, spec.help)
            gauge.add_metric([], stats.last_success)
            yield gauge
