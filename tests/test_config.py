"""Unit tests of the flag parsers behind the CLI."""

from __future__ import annotations

import pytest

from exporter.config import (
    ListenAddress,
    parse_buckets,
    parse_listen_address,
    parse_transport_option,
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
        ("visibility_timeout=3600", ("visibility_timeout", 3600)),
        ("global_keyprefix=prod:", ("global_keyprefix", "prod:")),
        ('sentinel_kwargs={"password": "x"}', ("sentinel_kwargs", {"password": "x"})),
        ("fanout_patterns=true", ("fanout_patterns", True)),
        ("master_name=a=b", ("master_name", "a=b")),
    ],
)
def test_transport_options_read_json_values(text: str, expected: tuple[str, object]) -> None:
    assert parse_transport_option(text) == expected


@pytest.mark.parametrize("bad", ["novalue", "=3", " =x"])
def test_transport_options_need_a_key(bad: str) -> None:
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_transport_option(bad)
