"""Broker queues: how many messages wait, who consumes them, how old the oldest waiting task is;
prefetched and orphaned tasks.

The event stream cannot say how many messages wait in a broker queue, so a poller thread of its own
(``poller.py``) asks the broker, over a connection of its own, through one reader per broker
(``redis.py``: LLEN over kombu's priority lists; ``amqp.py``: passive ``queue.declare``). Which
queues to ask about is ``registry.py``'s job; ``collector.py`` exports the poller's last readings,
so a stalled broker never delays a scrape; ``wiring.py`` puts them together for a broker URL.
``tracking.py`` follows task events for what only they tell: tasks sent and not yet received,
received and not started (prefetched), started and lost with a worker that vanished (orphaned).
"""
