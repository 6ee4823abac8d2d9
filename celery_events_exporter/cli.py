"""Command line: the settings declared in ``celery_events_exporter.config.Config`` as click
options, each with
its ``CELERY_EXPORTER_*`` environment twin, into one typed Config.

Every line the exporter writes to stderr is a log line in the chosen ``--log.format``, a
mistake in the flags included: click's own usage errors are caught and logged (exit code 2),
like a port that is taken (exit code 1). Deprecated flag and variable names still work and
log a warning once.
"""

from __future__ import annotations

import os
import platform
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import click
from click.core import ParameterSource

from celery_events_exporter import __version__
from celery_events_exporter import logging as exporter_logging
from celery_events_exporter.config import Config
from celery_events_exporter.settings import Declared, declared

PROG_NAME = "celery-events-exporter"
SETTINGS: tuple[Declared, ...] = tuple(declared(Config))
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


class _Parsed(click.ParamType):  # type: ignore[type-arg]
    """A flag value read by a setting's parser; its ValueError becomes click's usage error."""

    def __init__(self, metavar: str, parse: Callable[[str], Any]) -> None:
        self.name = metavar
        self._parse = parse

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):  # already read (click converts some values twice)
            return value
        try:
            return self._parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _HelpFormatter(click.HelpFormatter):
    """click's help layout, wrapped at spaces only: click's wrapper also breaks at hyphens and
    inside long words, which cut flag names (``--log-`` / ``format``) and numbers in two."""

    def write_dl(
        self, rows: Iterable[tuple[str, str]], col_max: int = 30, col_spacing: int = 2
    ) -> None:
        rows = list(rows)
        first_col = min(max((len(first) for first, _ in rows), default=0), col_max) + col_spacing
        indent = " " * self.current_indent
        text_width = max(self.width - first_col - 2, 20)
        for first, second in rows:
            self.write(f"{indent}{first}")
            if not second:
                self.write("\n")
                continue
            if len(first) <= first_col - col_spacing:
                self.write(" " * (first_col - len(first)))
            else:
                self.write("\n" + " " * (first_col + self.current_indent))
            lines = textwrap.wrap(
                second, text_width, break_on_hyphens=False, break_long_words=False
            )
            self.write(lines[0] + "\n" if lines else "\n")
            for line in lines[1:]:
                self.write(" " * (first_col + self.current_indent) + line + "\n")


class _Context(click.Context):
    formatter_class = _HelpFormatter


class _SettingOption(click.Option):
    """An option whose ``--help`` shows the default as the setting writes it (``on``,
    ``0.01, 0.025, ...``), not in click's parentheses for a description."""

    def __init__(self, *args: Any, shown_default: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shown_default = shown_default

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        extra.pop("default", None)
        if self.shown_default is not None:
            extra["default"] = self.shown_default
        return extra


def _alias_name(item: Declared) -> str:
    return f"deprecated_{item.name}"


def full_help(item: Declared) -> str:
    """The setting's help, and its former names if it has any."""
    former = (*item.setting.deprecated_flags, *item.setting.deprecated_envs)
    if not former:
        return item.setting.help
    return f"{item.setting.help} Formerly {' and '.join(former)} (deprecated, still read)."


def _options(item: Declared) -> Iterator[click.Option]:
    """The click option of a setting, and a hidden one for its deprecated names."""
    s = item.setting
    help_text = full_help(item)
    if s.negation is not None:
        yield _SettingOption(
            [f"{s.flag}/{s.negation}", item.name],
            envvar=s.env,
            show_envvar=True,
            default=item.default,
            shown_default=item.default_text(for_help=True),
            help=help_text,
        )
        return
    assert s.parse is not None, item.name
    kind = _Parsed(s.metavar, s.parse)
    yield _SettingOption(
        [s.flag, item.name],
        envvar=s.env,
        show_envvar=True,
        type=kind,
        multiple=s.repeatable,
        default=None,  # Config's default applies; click only shows it
        shown_default=item.default_text(for_help=True),
        help=help_text,
    )
    if s.deprecated_flags or s.deprecated_envs:
        yield click.Option(
            [*(s.deprecated_flags or (f"--{_alias_name(item)}",)), _alias_name(item)],
            envvar=list(s.deprecated_envs) or None,
            type=kind,
            multiple=s.repeatable,
            default=None,
            hidden=True,
        )


@dataclass(frozen=True)
class Deprecation:
    """A deprecated name (or value) the user gave, and what replaces it."""

    kind: str
    name: str
    use: str


def resolve(
    params: Mapping[str, Any],
    source: Callable[[str], ParameterSource | None],
    environ: Mapping[str, str],
) -> tuple[dict[str, Any], list[Deprecation]]:
    """Config's keyword arguments from click's parameters (only what was given: Config has the
    defaults), and the deprecated names that were used.

    Precedence: the flag, its deprecated name, the environment variable, its deprecated name.
    """
    values: dict[str, Any] = {}
    notes: list[Deprecation] = []
    for item in SETTINGS:
        s = item.setting
        value, origin = params[item.name], source(item.name)
        given = origin in _GIVEN
        alias = _alias_name(item)
        alias_origin = source(alias) if alias in params else None
        if alias_origin in _GIVEN:
            if alias_origin is ParameterSource.COMMANDLINE:
                notes.append(Deprecation("flag", s.deprecated_flags[0], s.flag))
            else:
                old = next(name for name in s.deprecated_envs if name in environ)
                notes.append(Deprecation("environment variable", old, s.env))
            flag_beats_env = (
                alias_origin is ParameterSource.COMMANDLINE
                and origin is ParameterSource.ENVIRONMENT
            )
            if not given or flag_beats_env:
                value, given = params[alias], True
        if given:
            values[item.name] = s.collect(value) if s.repeatable else value
    log_format: str = values.get("log_format", "")
    if log_format in exporter_logging.DEPRECATED_LOG_FORMATS:
        resolved = exporter_logging.resolve_log_format(log_format)
        notes.append(Deprecation("log format", log_format, resolved))
        values["log_format"] = resolved
    return values, notes


def build_details() -> str:
    """What ``--version`` prints: the exporter's version and those of what it runs with."""

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return (
        f"{PROG_NAME}, version {__version__}\n"
        f"  python:  {platform.python_version()} ({platform.python_implementation()})\n"
        f"  celery:  {installed('celery')}\n"
        f"  kombu:   {installed('kombu')}\n"
        f"  platform: {platform.system().lower()}/{platform.machine()}"
    )


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(build_details())
        ctx.exit(0)


def _run(**params: Any) -> int:
    ctx = click.get_current_context()
    values, notes = resolve(params, ctx.get_parameter_source, os.environ)
    try:
        config = Config(**values)
    except ValueError as exc:  # settings that contradict each other
        raise click.UsageError(str(exc)) from None
    exporter_logging.configure(config.log_level, config.log_format)
    log = exporter_logging.get_logger(__name__)
    for note in notes:
        log.warning(f"deprecated {note.kind}", name=note.name, use=note.use)

    from celery_events_exporter.app import run
    from celery_events_exporter.history.wiring import HistoryStoreUnopenable

    try:
        return run(config)
    except HistoryStoreUnopenable as exc:
        log.error(
            "cannot open the task history",
            error=str(exc),
            hint="give --data-dir a writable directory (a volume in a container), "
            "or --tasks.store postgresql://... or memory://",
        )
        return 1
    except OSError as exc:  # the listen address is taken or not ours
        log.error(
            "cannot listen",
            address=str(config.listen),
            error=exc.strerror or str(exc),
        )
        return 1


class _Command(click.Command):
    context_class = _Context


command = _Command(
    PROG_NAME,
    callback=_run,
    params=[
        *(option for item in SETTINGS for option in _options(item)),
        click.Option(
            ["--version"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=_print_version,
            help="Print the version and those of Python, Celery and kombu, then exit.",
        ),
    ],
    help="Export Celery's event stream as Prometheus metrics.",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _log_format_hint(args: Sequence[str], environ: Mapping[str, str]) -> str:
    """The log format asked for, read without click (for a line about click's own error)."""
    item = next(item for item in SETTINGS if item.name == "log_format")
    names = (item.setting.flag, *item.setting.deprecated_flags)
    wanted: str | None = None
    for index, arg in enumerate(args):
        name, sep, inline = arg.partition("=")
        if name in names:
            wanted = inline if sep else (args[index + 1] if index + 1 < len(args) else None)
    if wanted is None:
        wanted = environ.get(item.setting.env)
    if wanted is None:
        return "logfmt"
    resolved = exporter_logging.resolve_log_format(wanted.strip().lower())
    return resolved if resolved in exporter_logging.LOG_FORMATS else "logfmt"


def main(args: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["history"]:  # the history's own subcommands (history/cli.py)
        from celery_events_exporter.history.cli import history

        history.main(argv[1:], prog_name=f"{PROG_NAME} history")
        return
    try:
        code = command.main(argv, prog_name=PROG_NAME, standalone_mode=False)
    except click.ClickException as exc:
        exporter_logging.configure("info", _log_format_hint(argv, os.environ))
        exporter_logging.get_logger(__name__).error(
            "invalid configuration", error=exc.format_message(), help=f"{PROG_NAME} --help"
        )
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
