"""Benchmark of celery-events-exporter against a bare Celery EventReceiver; see README.md."""
