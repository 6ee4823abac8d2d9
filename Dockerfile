# One image for the exporter, the demo worker and the load generator; each
# compose service picks its role with its own command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Metadata and package first, so editing the demo does not reinstall deps.
COPY pyproject.toml README.md ./
COPY celery_events_exporter ./celery_events_exporter
RUN pip install ".[demo]"

# The demo is not part of the distribution: it is imported from /app.
COPY demo ./demo
ENV PYTHONPATH=/app \
    DEMO_DATA_DIR=/data

RUN useradd --create-home --uid 10001 app \
    && mkdir -p /data \
    && chown app /data
USER app

EXPOSE 19808
CMD ["celery-events-exporter", "--web.listen-address", "0.0.0.0:19808"]
