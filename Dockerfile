# The demo image only: the demo Celery workers and the load generator of docker-compose.yml
# (demo/ and the Pillow the demo tasks use). The exporter's own image is built without a
# container engine by scripts/build-image and published as
# ghcr.io/celery-events-exporter/celery-events-exporter:VERSION; it never carries the demo.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Metadata and package first, so editing the demo does not reinstall deps.
COPY pyproject.toml README.md ./
COPY celery_events_exporter ./celery_events_exporter
# The project itself: its dependencies' bounds are in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[demo]"

# The demo is not part of the distribution: it is imported from /app.
COPY demo ./demo
ENV PYTHONPATH=/app \
    DEMO_DATA_DIR=/data

RUN useradd --no-log-init --create-home --uid 10001 app \
    && mkdir -p /data \
    && chown app /data
USER 10001

CMD ["celery", "-A", "demo.app", "worker", "-E", "-n", "celery@%h", "--loglevel", "INFO"]
