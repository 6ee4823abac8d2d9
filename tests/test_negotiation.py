"""Content negotiation for ``/metrics``: the Accept headers Prometheus sends, q-values, and the
Content-Type strings prometheus-client writes for the same formats."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import choose_encoder

from celery_events_exporter.exposition.negotiation import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Choice,
    MediaRange,
    choose,
    parse_accept,
)
from celery_events_exporter.exposition.writer import Format

# Prometheus 2.0-2.48 (Debian's 2.42 here, as seen on the wire; scrape/scrape.go's
# scrapeAcceptHeader).
PROMETHEUS_2_42 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
# Prometheus 2.49+ builds the header from scrape_protocols (acceptHeader in scrape/scrape.go):
# q = 0.<n> falling by one per protocol, n = number of known protocols + 1, then */*.
PROMETHEUS_2_49 = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;"
    "version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
# ... with native histograms on, protobuf first (not written here).
PROMETHEUS_2_49_PROTO_FIRST = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;"
    "q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,application/openmetrics-text;"
    "version=0.0.1;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)
# Prometheus 3.x: text 1.0.0 among the defaults, and the escaping scheme on the 1.0.0 formats.
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;"
    "escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
PROMETHEUS_3_UNDERSCORES = PROMETHEUS_3.replace("allow-utf-8", "underscores")
# scrape_protocols: [PrometheusText0.0.4, OpenMetricsText1.0.0] on 2.49+: text preferred.
PROMETHEUS_TEXT_FIRST = (
    "text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,*/*;q=0.3"
)

TEXT = Choice(Format.TEXT, TEXT_CONTENT_TYPE)
OPENMETRICS = Choice(Format.OPENMETRICS, f"{OPENMETRICS_CONTENT_TYPE}; escaping=underscores")
OPENMETRICS_UTF8 = Choice(Format.OPENMETRICS, f"{OPENMETRICS_CONTENT_TYPE}; escaping=allow-utf-8")
OPENMETRICS_UNVERSIONED = Choice(Format.OPENMETRICS, OPENMETRICS_CONTENT_TYPE)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PROMETHEUS_2_42, OPENMETRICS),
        (PROMETHEUS_2_49, OPENMETRICS),
        (PROMETHEUS_2_49_PROTO_FIRST, OPENMETRICS),
        (PROMETHEUS_3, OPENMETRICS_UTF8),
        (PROMETHEUS_3_UNDERSCORES, OPENMETRICS),
        ("", TEXT),
        ("*/*", TEXT),
        ("text/plain", TEXT),
        ("text/plain;version=0.0.4", TEXT),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", TEXT),  # a browser
        ("application/openmetrics-text", OPENMETRICS_UNVERSIONED),
        ("application/openmetrics-text;version=1.0.0", OPENMETRICS),
        ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8", OPENMETRICS_UTF8),
        ("application/openmetrics-text;version=1.0.0;escaping=nonsense", OPENMETRICS),
        ("text/plain,application/openmetrics-text;version=1.0.0", OPENMETRICS),
    ],
)
def test_the_choice_and_content_type_are_prometheus_clients(accept: str, expected: Choice) -> None:
    """Where prometheus-client writes one of our two formats, the same one with the same
    Content-Type string."""
    assert choose(accept) == expected
    _, content_type = choose_encoder(accept)
    assert content_type == expected.content_type


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        # q-values count (prometheus-client takes the first OpenMetrics or text range it finds).
        (PROMETHEUS_TEXT_FIRST, TEXT),
        ("application/openmetrics-text;q=0.2,text/plain;q=0.3", TEXT),
        ("text/plain;q=0.3,application/openmetrics-text;q=0.4", OPENMETRICS_UNVERSIONED),
        ("application/openmetrics-text;version=1.0.0;q=0", TEXT),
        ("application/openmetrics-text;version=1.0.0;q=0.0,*/*", TEXT),
        # The most specific range sets a format's weight: text/plain's 0.1 over */*'s 1.
        ("text/plain;q=0.1,*/*,application/openmetrics-text;version=1.0.0;q=0.5", OPENMETRICS),
        ("application/openmetrics-text;q=1,application/openmetrics-text;version=1.0.0;q=0", TEXT),
        # Equal weights: the format the scraper named explicitly, OpenMetrics.
        ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.5", OPENMETRICS),
        # Versions and escapings not written here are not offered: the next range wins.
        ("application/openmetrics-text;version=2.0.0,text/plain;q=0.1", TEXT),
        ("application/openmetrics-text;version=0.0.1", TEXT),
        ("application/openmetrics-text;version=1.0.0;escaping=dots", TEXT),
        ("application/openmetrics-text;version=1.0.0;escaping=values", TEXT),
        ("text/plain;version=1.0.0;escaping=allow-utf-8", TEXT),
        (
            "text/plain;version=1.0.0;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5",
            OPENMETRICS,
        ),
        # Wildcards alone do not ask for OpenMetrics.
        ("application/*", TEXT),
        ("*/*;q=0.9,text/*;q=0.1", TEXT),
        ("application/json", TEXT),  # nothing acceptable: the text format, never a 406
        # Case, blanks and quotes as RFC 9110 allows them.
        ("Application/OpenMetrics-Text; Version=1.0.0; Q=0.9, text/plain; q=0.5", OPENMETRICS),
        ('application/openmetrics-text;version="1.0.0"', OPENMETRICS),
        # Malformed elements and weights are skipped, not fatal.
        ("garbage,;;,/,text/,application/openmetrics-text;q=high", TEXT),
        ("application/openmetrics-text;q=2", TEXT),
        ("application/openmetrics-text;=1;version", OPENMETRICS_UNVERSIONED),
    ],
)
def test_q_values_specificity_and_what_is_not_offered(accept: str, expected: Choice) -> None:
    assert choose(accept) == expected


def test_parse_accept_keeps_order_parameters_and_weights() -> None:
    assert parse_accept(PROMETHEUS_2_42) == [
        MediaRange("application", "openmetrics-text", {"version": "1.0.0"}, 1.0),
        MediaRange("application", "openmetrics-text", {"version": "0.0.1"}, 0.75),
        MediaRange("text", "plain", {"version": "0.0.4"}, 0.5),
        MediaRange("*", "*", {}, 0.1),
    ]


@settings(max_examples=300, deadline=None)
@given(accept=st.text())
def test_any_header_gets_one_of_the_formats(accept: str) -> None:
    assert choose(accept) in {TEXT, OPENMETRICS, OPENMETRICS_UTF8, OPENMETRICS_UNVERSIONED}
