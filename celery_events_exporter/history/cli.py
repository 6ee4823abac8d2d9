"""``celery-events-exporter history delete``: erase tasks from the history (erasure requests).

Reads the same ``--tasks.store``/``--data-dir`` (and their environment twins) as the exporter,
deletes in small batches (a running exporter keeps writing meanwhile), and prints how many rows
went. A task still running may come back with its next event: erase after it ended.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from celery_events_exporter.history import urls
from celery_events_exporter.history.sql import Erasure
from celery_events_exporter.history.wiring import open_store
from celery_events_exporter.settings import env_name


def _moment(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"expected ISO 8601 (2026-12-01T00:00:00Z), got {text!r}"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@click.group(name="history", help="Manage the task history (docs/task-history.md).")
def history() -> None:
    pass


@history.command(
    name="delete", help="Delete tasks from the history: every given criterion must hold."
)
@click.option(
    "--tasks.store",
    "store",
    envvar=env_name("--tasks.store"),
    default="",
    help="The history's URL, as the exporter's --tasks.store.",
)
@click.option(
    "--data-dir",
    envvar=env_name("--data-dir"),
    default="",
    help="The exporter's --data-dir (for the default SQLite file).",
)
@click.option("--uuid", "uuids", multiple=True, help="A task uuid (repeatable).")
@click.option("--name", default=None, help="A task name (exact).")
@click.option(
    "--since", default=None, help="First seen at or after this time (ISO 8601, UTC if no offset)."
)
@click.option(
    "--until", default=None, help="First seen before this time (ISO 8601, UTC if no offset)."
)
def delete(
    store: str, data_dir: str, uuids: tuple[str, ...], name: str | None, since: str | None,
    until: str | None,
) -> None:  # fmt: skip
    url = urls.resolve(urls.parse_store_url(store) if store else "", data_dir)
    if url == urls.MEMORY:
        raise click.UsageError("memory:// keeps no history to delete from")
    erasure = Erasure(uuids=uuids, name=name, since=_moment(since), until=_moment(until))
    if not (uuids or name is not None or since or until):
        raise click.UsageError("give --uuid, --name, --since or --until")
    opened = open_store(url)
    try:
        opened.migrate()
        deleted = opened.erase(erasure)
    finally:
        opened.close()
    click.echo(f"deleted {deleted} task(s) from {opened.description}")
