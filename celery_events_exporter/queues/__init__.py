"""Broker queues: how many messages wait, who consumes them, how old the oldest waiting task is.

The event stream cannot say how many messages wait in a broker queue, so a poller thread of its own
(``poller.py``) asks the broker, over a connection of its own, through one reader per broker
(``redis.py``: LLEN over kombu's priority lists; ``amqp.py``: passive ``queue.declare``). Which
queues to ask about is ``registry.py``'s job; ``collector.py`` exports the poller's last readings,
so a stalled broker never delays a scrape, with the views of the state's task ledger (the oldest
waiting task per queue, prefetched tasks per worker); ``wiring.py`` puts them together for a
broker URL. Only the broker is polled here: what the task events tell is the state's ledger's.
"""
