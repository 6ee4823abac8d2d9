"""Unit tests of the setting parsers: listen addresses, buckets, broker URLs, transport options."""

from __future__ import annotations

import pytest

from celery_events_exporter.broker_options import (
    broker_address,
    parse_broker_url,
    parse_transport_option,
)
from celery_events_exporter.parsers import (
    ListenAddress,
    choice,
    integer,
    parse_buckets,
    parse_listen_address,
    parse_telemetry_path,
    seconds,
    size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":19808", ListenAddress("", 19808)),
        ("127.0.0.1:9", ListenAddress("127.0.0.1", 9)),
        ("[::1]:19808", ListenAddress("::1", 19808)),
        ("exporter.internal:0", ListenAddress("exporter.internal", 0)),
    ],
)
def test_listen_addresses(text: str, expected: ListenAddress) -> None:
    assert parse_listen_address(text) == expected


def test_listen_address_prints_ipv6_in_brackets() -> None:
    assert str(ListenAddress("::1", 80)) == "[::1]:80"
    assert str(ListenAddress("", 80)) == ":80"


def test_buckets_parse_and_validate() -> None:
    assert parse_buckets("0.5, 1,2.5") == (0.5, 1.0, 2.5)
    for bad in ("", "1,1", "2,1", "-1,2", "inf", "nan", "1,x"):
        with pytest.raises(ValueError):
            parse_buckets(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # text stays text, whatever it looks like (issue 10: the number 4711 broke kombu)
        ("global_keyprefix=4711", ("global_keyprefix", "4711")),
        ("global_keyprefix=prod:", ("global_keyprefix", "prod:")),
        ("master_name=a=b", ("master_name", "a=b")),
        ("client_name=true", ("client_name", "true")),
        ("some_future_option=12", ("some_future_option", "12")),
        # the options kombu wants typed are converted
        ("visibility_timeout=3600", ("visibility_timeout", 3600.0)),
        ("socket_timeout=2.5", ("socket_timeout", 2.5)),
        ("max_connections=10", ("max_connections", 10)),
        ("health_check_interval=0", ("health_check_interval", 0)),
        ("fanout_patterns=true", ("fanout_patterns", True)),
        ("fanout_prefix=off", ("fanout_prefix", False)),
        ("exporter_fast_path=false", ("exporter_fast_path", False)),
        ("priority_steps=0,3,6,9", ("priority_steps", [0, 3, 6, 9])),
        ("priority_steps=[0, 5]", ("priority_steps", [0, 5])),
        ('sentinel_kwargs={"password": "x"}', ("sentinel_kwargs", {"password": "x"})),
        # KEY:=JSON says the value is JSON
        ('sentinel_kwargs:={"password": "x"}', ("sentinel_kwargs", {"password": "x"})),
        ('global_keyprefix:="4711"', ("global_keyprefix", "4711")),
        ("visibility_timeout:=60", ("visibility_timeout", 60.0)),
        ("some_future_option:=12", ("some_future_option", 12)),
        ("some_future_option:=[1, 2]", ("some_future_option", [1, 2])),
    ],
)
def test_transport_options_keep_their_types(text: str, expected: tuple[str, object]) -> None:
    key, value = parse_transport_option(text)
    assert (key, value) == expected
    assert type(value) is type(expected[1])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("visibility_timeout=soon", "transport option visibility_timeout: expected a number"),
        ("max_connections=2.5", "transport option max_connections: expected a whole number"),
        ("fanout_prefix=maybe", "transport option fanout_prefix: expected true or false"),
        ("priority_steps=a,b", "expected comma-separated whole numbers"),
        ("sentinel_kwargs=nope", "transport option sentinel_kwargs: expected JSON"),
        ("sentinel_kwargs=[1]", "expected a JSON object, got [1]"),
        ('max_connections:="10"', 'expected a whole number, got "10"'),
        ("global_keyprefix:=4711", "expected a string, got 4711"),
        ("fanout_prefix:=1", "expected true or false, got 1"),
        ("priority_steps:=[0, true]", "expected a list of whole numbers"),
        ("anything:=not json", "'not json' is not JSON"),
    ],
)
def test_a_transport_option_of_the_wrong_type_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_transport_option(text)
    assert message in str(caught.value)


@pytest.mark.parametrize("bad", ["novalue", "=3", " =x", ":=3"])
def test_transport_options_need_a_key(bad: str) -> None:
    with pytest.raises(ValueError, match="expected KEY=VALUE or KEY:=JSON"):
        parse_transport_option(bad)


@pytest.mark.parametrize(
    "url",
    [
        "redis://",
        "redis://localhost:6379/0",
        "rediss://:secret@cache.internal:6380/2",
        "amqp://guest:guest@127.0.0.1:5672//",
        "pyamqp://rabbit/vhost",
        "sentinel://a:26379;sentinel://b:26379",
        "memory://",
        "filesystem://",
    ],
)
def test_good_broker_urls_pass(url: str) -> None:
    assert parse_broker_url(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:6379", "'localhost:6379' has no scheme: write it as a URL, e.g. "
         "redis://localhost:6379"),
        ("redis//host", "'redis//host' has no ':' after its scheme: did you mean "
         "'redis://host'?"),
        ("carrier-pigeon://coop", "unknown broker URL scheme 'carrier-pigeon'; kombu knows amqp,"),
        ("redis://:hunter2@host:port/0", "'redis://:**@host:port/0' has a port that is not a "
         "number"),
        ("redis://a;b:6379", "'b:6379' has no scheme"),
        ("", "the broker URL is empty"),
    ],
)  # fmt: skip
def test_bad_broker_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_broker_url(url)
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://", "localhost:6379"),
        ("redis://:hunter2@127.0.0.1:6380/3", "127.0.0.1:6380"),
        ("amqp://guest:guest@rabbit//", "rabbit:5672"),
        ("sentinel://a:26379;sentinel://b:26380", "a:26379"),
        ("memory://", "localhost"),
    ],
)
def test_broker_address_names_host_and_port_without_the_password(url: str, address: str) -> None:
    assert broker_address(url) == address


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics", "expected an absolute URL path"),
        ("/metrics?x", "expected an absolute URL path"),
        ("/healthz", "/healthz is one of the exporter's other endpoints"),
        ("/", "/ is one of the exporter's other endpoints"),
    ],
)
def test_telemetry_path_is_a_free_absolute_path(text: str, message: str) -> None:
    assert parse_telemetry_path("/internal/metrics") == "/internal/metrics"
    with pytest.raises(ValueError, match=message):
        parse_telemetry_path(text)


def test_numbers_and_choices() -> None:
    assert seconds(1)("2.5") == 2.5
    assert integer(16, 100)("16") == 16
    assert choice(("logfmt", "json"), accepted=("auto",))("JSON") == "json"
    assert choice(("logfmt", "json"), accepted=("auto",))("auto") == "auto"
    for parse, bad, message in [
        (seconds(1), "0.5", "expected a number of seconds >= 1, got '0.5'"),
        (seconds(0), "inf", "expected a finite number of seconds, got 'inf'"),
        (seconds(0), "soon", "expected a number of seconds, got 'soon'"),
        (integer(16, 100), "101", "expected a whole number within 16-100, got '101'"),
        (integer(0), "1.5", "expected a whole number, got '1.5'"),
        (choice(("logfmt", "json")), "xml", "expected one of logfmt, json, got 'xml'"),
    ]:
        with pytest.raises(ValueError) as caught:
            parse(bad)
        assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("268435456", 268_435_456),
        ("256MiB", 256 << 20),
        ("64 KiB", 64 << 10),
        ("1.5GiB", 3 << 29),
        ("500MB", 500_000_000),
        ("4096", 4096),
    ],
)
def test_sizes_read_in_bytes_or_with_a_unit(text: str, parsed: int) -> None:
    assert size(4096)(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lots", "expected bytes, or a size such as 256MiB, got 'lots'"),
        ("1.5", "expected bytes, or a size such as 256MiB"),
        ("4095", "expected at least 4096 bytes, got '4095'"),
        ("infGiB", "expected at least 4096 bytes"),
        ("-1MiB", "expected at least 4096 bytes"),
    ],
)
def test_bad_sizes_name_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        size(4096)(text)
