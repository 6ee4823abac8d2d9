"""The payload masker takes time linear in its input, whatever the input (issue 20: its
quoted-key regex was quadratic, 60 ms for a 4 kB field of ``'\\'\\'\\'...``, and four clients
of ``/api/tasks`` pinned the CPU), and masks what the plain quadratic scanner it replaced
masked: held to that scanner, kept here as the reference."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from celery_events_exporter.tasks import redact
from celery_events_exporter.tasks.redact import (
    DEFAULT_SECRET_KEY_PATTERNS,
    MASK,
    Redactor,
    compile_secret_keys,
)

REDACTOR = Redactor(compile_secret_keys(DEFAULT_SECRET_KEY_PATTERNS), 1024)

# The scanner as it was (f49cc18): a regex search for every site, quoted keys included.
_REFERENCE_SITE = re.compile(
    r"""(?P<key>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\b[A-Za-z_][\w-]*)\s*(?P<sep>:|=)\s*"""
    r"""|(?P<flag>(?P<quote>['"])--?[A-Za-z][\w-]*(?P=quote))\s*,\s*"""
    r"""|(?<![\w-])(?P<word>--?[A-Za-z][\w-]*)[ \t]+"""
)


def reference_sites(text: str) -> str:
    """What the old scanner masked, before its by-shape pass."""
    out: list[str] = []
    emitted = search_from = 0
    while True:
        match = _REFERENCE_SITE.search(text, search_from)
        if match is None:
            break
        group = "key" if match["key"] else "flag" if match["flag"] else "word"
        if not REDACTOR.is_secret_key(match[group]):
            search_from = match.start("sep") + 1 if group == "key" else match.end(group)
            continue
        start = match.end()
        end = redact._value_end(text, start)
        out.append(text[emitted:start])
        if end > start:
            quote = text[start] if text[start] in "'\"" else ""
            out.append(f"{quote}{MASK}{quote}")
        emitted = search_from = end
    out.append(text[emitted:])
    return "".join(out)


ALPHABET = st.sampled_from(
    [
        "'",
        '"',
        "\\",
        ":",
        "=",
        " ",
        ",",
        "-",
        "--",
        "a",
        "pwd",
        "token",
        "x_",
        "(",
        ")",
        "{",
        "}",
        "\n",
        "é",
    ]
)
"""The characters and words the scanner's branches turn on, so that random texts hit them."""


@pytest.mark.unit
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(ALPHABET, max_size=40).map("".join))
@example("{'pwd': 'x', 'a\\'pwd': 'y'}")
@example("'a\\'token' = 3, \"b\": 4, --pwd x, '--token', 'y'")
@example("x-pwd=1 --pwd=2 pwd : 3")
@example("-pwd :")
def test_the_linear_scanner_masks_what_the_quadratic_one_did(text: str) -> None:
    # The alphabet makes no URL, JWT or Authorization value: the by-shape pass, whose patterns
    # changed (see security.md), does the same to both.
    assert REDACTOR.mask_text(text) == redact._mask_values(reference_sites(text))


ADVERSARIAL = {
    "escaped single quotes": "\\'",
    "escaped double quotes": '\\"',
    "dashed words": "a-",
    "dashed tokens": "eyJ-",
    "URL scheme run": "a",
    "quoted flags": "'--a",
    "a key name, no separator": "'pwd' ",
    "keys and values": "'a': 'b', ",
    "mixed": "x'\\'\"\\\"",
}


def cpu_seconds(text: str) -> float:
    """The least CPU time of a few maskings of ``text``: a loaded machine only adds."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        REDACTOR.mask(text)
        REDACTOR.mask_text(text)
        best = min(best, time.process_time() - started)
    return best


@pytest.mark.unit
@pytest.mark.parametrize("unit", ADVERSARIAL.values(), ids=list(ADVERSARIAL))
def test_masking_time_grows_linearly_with_the_input(unit: str) -> None:
    # Four times the input may take about four times as long (8x allows for noise); the
    # quadratic scanner took 16x. A prefix makes "://" appear, for the URL pattern's sake.
    small = "'" + "://" + unit * (4096 // len(unit))
    large = "'" + "://" + unit * (4 * 4096 // len(unit))
    ratio = cpu_seconds(large) / max(cpu_seconds(small), 1e-6)
    assert ratio < 8.0, f"{ratio:.1f}x the time for 4x the input"
    assert cpu_seconds(small) < 0.02  # a 4 kB field: 60 ms before


@pytest.mark.unit
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ALPHABET, min_size=1, max_size=8).map("".join))
def test_any_repeated_pattern_masks_in_linear_time(unit: str) -> None:
    small = unit * (2048 // len(unit) + 1)
    ratio = cpu_seconds(small * 4) / max(cpu_seconds(small), 1e-4)
    assert ratio < 8.0, f"{unit!r}: {ratio:.1f}x the time for 4x the input"
