"""Event intake: paths from a broker to the ingest queue, one module per path.

Each path only drains the broker into a queue of ``RawMessage``; decoding and counting happen on
the ingest thread (``exporter.ingest``) so that the broker's socket never waits for them.
"""
