"""Celery's events: the vocabulary, and decoding broker messages into events for the state."""
