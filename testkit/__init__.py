"""Private brokers, free ports and hand-made events for the tests and the benchmarks (not part of
the package).

Both start real servers of their own: a ``redis-server`` on a free port that they may stop or
freeze, a RabbitMQ node on free ports that they may freeze, a RabbitMQ virtual host on the
machine's RabbitMQ. One implementation, so that a fix to how a private broker starts or ends
reaches both. ``events`` publishes Celery events by hand, as any broker client may.
"""
