"""Demo Celery workload that resembles Blurit's, used to feed the exporter and the dashboards."""
