"""Where the history is kept: ``--tasks.store``'s URL and the data directory it defaults to."""

from __future__ import annotations

import os
from pathlib import Path

MEMORY = "memory://"
SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")
DEFAULT_FILE = "tasks.sqlite3"
"""The SQLite file's name in the data directory when ``--tasks.store`` is not given."""


def parse_store_url(value: str) -> str:
    """``sqlite:///PATH``, ``postgresql://...`` or ``memory://``; anything else is a
    ValueError naming the three."""
    text = value.strip()
    if text == MEMORY or text.startswith(POSTGRES_PREFIXES):
        return text
    if text.startswith(SQLITE_PREFIX) and len(text) > len(SQLITE_PREFIX):
        return text
    raise ValueError(
        "expected sqlite:///PATH (a relative PATH is under --data-dir), postgresql://... or "
        f"memory://, got {redacted(text)!r}"
    )


def redacted(url: str) -> str:
    """A URL without what sits between ``://`` and ``@`` (user and password)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def default_data_dir() -> Path:
    """systemd's ``$STATE_DIRECTORY``, else ``$XDG_STATE_HOME/celery-events-exporter``, else
    ``~/.local/state/celery-events-exporter``."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "celery-events-exporter"


def sqlite_path(url: str, data_dir: str) -> Path:
    """The file a ``sqlite:///`` URL names: a relative path is under the data directory."""
    path = Path(url.removeprefix(SQLITE_PREFIX))
    if path.is_absolute():
        return path
    return (Path(data_dir) if data_dir else default_data_dir()) / path


def resolve(url: str, data_dir: str) -> str:
    """The store URL in force: ``sqlite:///DATA_DIR/tasks.sqlite3`` when none is given."""
    if not url:
        return f"{SQLITE_PREFIX}{sqlite_path(SQLITE_PREFIX + DEFAULT_FILE, data_dir)}"
    if url.startswith(SQLITE_PREFIX):
        return f"{SQLITE_PREFIX}{sqlite_path(url, data_dir)}"
    return url
