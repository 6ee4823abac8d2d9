"""Prometheus rules of celery-events-exporter, generated from the metric catalogue."""
