"""How a setting is declared: once, as a field of ``Config`` carrying a ``Setting``.

Each field of ``celery_events_exporter.config.Config`` is written with ``setting(default, flag=...,
help=...,
parse=...)``. Its type is the field's annotation, its default the field's default; the rest
(flag, environment twin, help, parser, deprecated names) rides in the field's metadata. The CLI
(``celery_events_exporter.cli``) builds its click options from these declarations and the README's
configuration table (``scripts/readme_tables.py``) is rendered from them, so a default, a help
text or an environment variable name is written in one place only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

ENV_PREFIX = "CELERY_EXPORTER_"

T = TypeVar("T")

_METADATA_KEY = "celery_events_exporter.setting"


def env_name(flag: str) -> str:
    """The environment twin of a flag: ``--web.listen-address`` -> ``CELERY_EXPORTER_WEB_LISTEN_
    ADDRESS`` (dots and dashes become underscores)."""
    return ENV_PREFIX + flag.removeprefix("--").replace(".", "_").replace("-", "_").upper()


@dataclass(frozen=True)
class Setting:
    """Everything about one setting but its type and default (those are the field's)."""

    flag: str
    help: str
    parse: Callable[[str], Any] | None
    """Reads one value from a flag or the environment; raises ValueError with a message that
    says what is wrong. None for on/off settings (``negation`` set): click reads those."""
    metavar: str = "TEXT"
    negation: str | None = None
    """The flag that turns an on/off setting off, e.g. ``--no-worker-label``."""
    repeatable: bool = False
    """The flag may be given several times (the environment variable takes several values
    separated by spaces); ``collect`` turns the parsed items into the field's value."""
    collect: Callable[[tuple[Any, ...]], Any] = tuple
    deprecated_flags: tuple[str, ...] = ()
    """Former names of the flag: still accepted, with a warning in the log."""
    deprecated_envs: tuple[str, ...] = ()
    """Former names of the environment variable: still read, with a warning in the log."""
    show_default: Callable[[Any], str | None] | None = None
    """How ``--help`` and the README show the default; None shows it the usual way."""

    @property
    def env(self) -> str:
        return env_name(self.flag)


@dataclass(frozen=True)
class Declared:
    """A declared setting with the field it belongs to."""

    name: str
    """The Config field's name."""
    default: Any
    setting: Setting

    def default_text(self, *, for_help: bool = False) -> str | None:
        """The default as the help and the README show it; None when there is nothing to show
        (an unset path, an empty repeatable flag)."""
        if self.setting.show_default is not None:
            return self.setting.show_default(self.default)
        return format_value(self.default, for_help=for_help)


def format_value(value: Any, *, for_help: bool = False) -> str | None:
    """A value written the way the flag takes it: bounds comma-separated, on/off for booleans.

    In ``--help`` a list gets a space after each comma: click wraps long lines at spaces only,
    and would cut a list written without any in the middle of a number.
    """
    if value is None or value == () or value == {}:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return (", " if for_help else ",").join(str(format_value(item)) for item in value)
    return str(value)


def setting(
    default: T,
    *,
    flag: str,
    help: str,
    parse: Callable[[str], Any] | None = None,
    **options: Any,
) -> T:
    """A Config field with a default and its ``Setting`` (see ``Setting`` for ``options``)."""
    return dataclasses.field(
        default=default, metadata={_METADATA_KEY: Setting(flag, help, parse, **options)}
    )


def setting_factory(
    factory: Callable[[], T],
    *,
    flag: str,
    help: str,
    parse: Callable[[str], Any] | None = None,
    **options: Any,
) -> T:
    """Like ``setting`` for a mutable default (a dict): each Config gets its own."""
    return dataclasses.field(
        default_factory=factory, metadata={_METADATA_KEY: Setting(flag, help, parse, **options)}
    )


def declared(config_class: type) -> Iterator[Declared]:
    """The settings of a dataclass written with ``setting``, in declaration order."""
    for field in dataclasses.fields(config_class):
        found = field.metadata.get(_METADATA_KEY)
        if found is None:
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            raise TypeError(f"setting {field.name} has no default")
        yield Declared(field.name, default, found)
