"""Unit tests of the settings' single declaration: what the CLI, Config, the state and the README
are made from, the precedence of deprecated names, and the logfmt lines."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
import structlog
from click.core import ParameterSource

from celery_events_exporter import logging as exporter_logging
from celery_events_exporter.app import state_settings
from celery_events_exporter.cli import SETTINGS, Deprecation, command, resolve
from celery_events_exporter.config import Config, ListenAddress
from celery_events_exporter.settings import env_name, format_value
from celery_events_exporter.state import StateSettings
from tests.logfmt import parse_line


def test_env_twins_follow_the_flag_names() -> None:
    assert env_name("--web.listen-address") == "CELERY_EXPORTER_WEB_LISTEN_ADDRESS"
    assert env_name("--web.config.file") == "CELERY_EXPORTER_WEB_CONFIG_FILE"
    assert env_name("--log.format") == "CELERY_EXPORTER_LOG_FORMAT"
    assert env_name("--max-recent-tasks") == "CELERY_EXPORTER_MAX_RECENT_TASKS"


def test_every_config_field_is_a_declared_setting_with_help_and_a_twin_of_its_own() -> None:
    assert [item.name for item in SETTINGS] == [f.name for f in dataclasses.fields(Config)]
    for item in SETTINGS:
        assert item.setting.help.endswith("."), item.name
        assert (item.setting.parse is None) == (item.setting.negation is not None), item.name
    # A twin is the flag's name made an environment variable's (tests/test_cli.py checks that
    # click reads it): two flags that differ only in a dot or a dash would share one.
    twins = [item.setting.env for item in SETTINGS]
    former = [env for item in SETTINGS for env in item.setting.deprecated_envs]
    assert len(set(twins + former)) == len(twins) + len(former)


def test_each_shown_default_reads_back_as_the_default() -> None:
    """The default the README and --help show is valid input that gives the default itself."""
    for item in SETTINGS:
        text = item.default_text()
        if text is None or item.setting.parse is None:
            continue
        if item.setting.repeatable:
            parsed = item.setting.collect(tuple(map(item.setting.parse, text.split(" "))))
        else:
            parsed = item.setting.parse(text)
        assert parsed == item.default, item.name
        help_text = item.default_text(for_help=True)
        assert help_text is not None
        if not item.setting.repeatable:
            assert item.setting.parse(help_text) == item.default, item.name


def test_defaults_shown_in_help_have_a_space_to_wrap_at_between_bounds() -> None:
    assert format_value((0.005, 0.01, 1.0), for_help=True) == "0.005, 0.01, 1"
    assert format_value((0.005, 0.01, 1.0)) == "0.005,0.01,1"
    assert format_value(True) == "on"
    assert format_value(None) is None


def test_the_state_takes_configs_values_of_the_same_names() -> None:
    config = Config(
        worker_label=False,
        worker_timeout=7.0,
        purge_offline_worker_after=60.0,
        runtime_buckets=(1.0, 2.0),
        queue_wait_buckets=(3.0,),
        max_tracked_tasks=5,
        max_exception_classes=2,
        purge_stopped_worker_after=30.0,
        max_registered_tasks=3,
    )
    settings = state_settings(config)
    assert settings == StateSettings(
        runtime_buckets=(1.0, 2.0),
        queue_wait_buckets=(3.0,),
        worker_label=False,
        worker_timeout=7.0,
        purge_offline_worker_after=60.0,
        max_tracked_tasks=5,
        max_exception_classes=2,
        purge_stopped_worker_after=30.0,
        max_registered_tasks=3,
    )
    config_fields = {f.name for f in dataclasses.fields(Config)}
    assert {f.name for f in dataclasses.fields(StateSettings)} <= config_fields


# -- precedence of deprecated names ------------------------------------------------------------


def _resolve(
    given: dict[str, tuple[Any, ParameterSource]], environ: dict[str, str] | None = None
) -> tuple[dict[str, Any], list[Deprecation]]:
    """resolve() over click's parameters: ``given`` as {parameter: (value, source)}, every
    other parameter at its default."""
    params: dict[str, Any] = {}
    sources: dict[str, ParameterSource] = {}
    for param in command.params:
        assert param.name is not None
        params[param.name] = () if getattr(param, "multiple", False) else None
        sources[param.name] = ParameterSource.DEFAULT
    for name, (value, source) in given.items():
        params[name], sources[name] = value, source
    return resolve(params, sources.get, environ or {})


OLD_FLAG = Deprecation("flag", "--listen-address", "--web.listen-address")
NEW = ListenAddress("127.0.0.1", 1)
OLD = ListenAddress("127.0.0.1", 2)
CLI, ENV = ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT


def test_nothing_given_leaves_configs_defaults() -> None:
    values, notes = _resolve({})
    assert values == {}
    assert notes == []
    assert Config(**values).listen == ListenAddress("", 19808)


@pytest.mark.parametrize(
    ("new", "old", "environ", "expected", "note"),
    [
        (None, (OLD, CLI), {}, OLD, OLD_FLAG),
        (
            None,
            (OLD, ENV),
            {"CELERY_EXPORTER_LISTEN_ADDRESS": "127.0.0.1:2"},
            OLD,
            Deprecation(
                "environment variable",
                "CELERY_EXPORTER_LISTEN_ADDRESS",
                "CELERY_EXPORTER_WEB_LISTEN_ADDRESS",
            ),
        ),
        # the new flag beats the old one; the new variable beats the old variable
        ((NEW, CLI), (OLD, CLI), {}, NEW, OLD_FLAG),
        (
            (NEW, ENV),
            (OLD, ENV),
            {"CELERY_EXPORTER_LISTEN_ADDRESS": "x"},
            NEW,
            Deprecation(
                "environment variable",
                "CELERY_EXPORTER_LISTEN_ADDRESS",
                "CELERY_EXPORTER_WEB_LISTEN_ADDRESS",
            ),
        ),
        # a flag, even a deprecated one, beats an environment variable
        ((NEW, ENV), (OLD, CLI), {}, OLD, OLD_FLAG),
    ],
)  # fmt: skip
def test_deprecated_names_still_work_and_are_noted(
    new: tuple[Any, ParameterSource] | None,
    old: tuple[Any, ParameterSource],
    environ: dict[str, str],
    expected: ListenAddress,
    note: Deprecation,
) -> None:
    given = {"deprecated_listen": old, **({"listen": new} if new else {})}
    values, notes = _resolve(given, environ)
    assert values == {"listen": expected}
    assert notes == [note]


@pytest.mark.parametrize(
    ("value", "resolved"), [("console", "logfmt"), ("auto", "json"), ("json", "json")]
)
def test_former_log_formats_are_mapped(value: str, resolved: str) -> None:
    # the tests' stderr is not a terminal: auto meant json there, and still does
    values, notes = _resolve({"deprecated_log_format": (value, CLI)})
    assert values == {"log_format": resolved}
    expected = [Deprecation("flag", "--log-format", "--log.format")]
    if value != resolved:
        expected.append(Deprecation("log format", value, resolved))
    assert notes == expected


def test_repeatable_settings_are_collected() -> None:
    values, _ = _resolve({"broker_transport_options": ((("a", "1"), ("max_connections", 3)), ENV)})
    assert values == {"broker_transport_options": {"a": "1", "max_connections": 3}}


# -- logfmt ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "written", "read"),
    [
        ("plain", "plain", "plain"),
        ("two words", '"two words"', "two words"),
        ("a=b", '"a=b"', "a=b"),
        ('say "hi"', '"say \\"hi\\""', 'say "hi"'),
        ("C:\\dir", '"C:\\\\dir"', "C:\\dir"),
        ("line one\nline two", '"line one\\nline two"', "line one\nline two"),
        ("tab\there", '"tab\\there"', "tab\there"),
        ("bell\x07", '"bell\\u0007"', "bell\x07"),
        ("", '""', ""),
        (None, "null", "null"),
        (True, "true", "true"),
        (3, "3", "3"),
        (0.5, "0.5", "0.5"),
        (["/0.celeryev/*"], '"[\\"/0.celeryev/*\\"]"', '["/0.celeryev/*"]'),
    ],
)
def test_logfmt_values_are_quoted_and_escaped(value: Any, written: str, read: str) -> None:
    line = exporter_logging.render_logfmt(None, "info", {"msg": "m", "v": value})
    assert line == f"msg=m v={written}"
    assert parse_line(line) == {"msg": "m", "v": read}


def test_logfmt_keys_never_break_the_line() -> None:
    line = exporter_logging.render_logfmt(None, "info", {"a key": 1, 'b="': 2, "": 3})
    assert parse_line(line) == {"a_key": "1", "b__": "2", "_": "3"}


def test_stdlib_and_structlog_lines_share_the_keys(capsys: pytest.CaptureFixture[str]) -> None:
    exporter_logging.configure("debug", "logfmt")
    try:
        structlog.get_logger("celery_events_exporter.test").warning("from structlog", n=1)
        logging.getLogger("celery.test").error("from %s", "stdlib")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            structlog.get_logger("celery_events_exporter.test").exception("failed")
        lines = [parse_line(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert [list(line)[:4] for line in lines] == [["ts", "level", "logger", "msg"]] * 3
    assert lines[0]["msg"] == "from structlog"
    assert lines[0]["n"] == "1"
    assert (lines[1]["logger"], lines[1]["level"], lines[1]["msg"]) == (
        "celery.test",
        "error",
        "from stdlib",
    )
    assert lines[2]["exception"].startswith("Traceback (most recent call last):\n")
    assert lines[2]["exception"].endswith("RuntimeError: boom")
