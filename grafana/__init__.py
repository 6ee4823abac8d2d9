"""Grafana dashboards of celery-events-exporter, generated from the metric catalogue."""
