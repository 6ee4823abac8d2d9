"""grafana/sql_macros.py: Grafana's variables and PostgreSQL macros, as the tests apply them."""

from __future__ import annotations

import pytest

from grafana.sql_macros import UnsafeSql, sql_string, substitute

pytestmark = pytest.mark.unit

FROM = 1_765_000_000.0  # 2025-12-06T05:46:40Z
TO = FROM + 3600


def test_time_filter_and_range_macros_become_grafanas_rfc3339_literals() -> None:
    sql = "SELECT 1 WHERE $__timeFilter(seen_at) AND x > $__timeFrom() AND x < $__timeTo()"
    assert substitute(sql, {}, time_from=FROM, time_to=TO) == (
        "SELECT 1 WHERE seen_at BETWEEN '2025-12-06T05:46:40Z' AND '2025-12-06T06:46:40Z' "
        "AND x > '2025-12-06T05:46:40Z' AND x < '2025-12-06T06:46:40Z'"
    )


def test_fractions_of_a_second_are_written_as_go_writes_them() -> None:
    sql = "$__timeFrom() $__timeTo()"
    assert substitute(sql, {}, time_from=FROM + 0.25, time_to=FROM + 1.5) == (
        "'2025-12-06T05:46:40.25Z' '2025-12-06T05:46:41.5Z'"
    )


def test_epoch_macros_and_the_interval() -> None:
    sql = "$__unixEpochFrom() $__unixEpochTo() $__interval $__interval_ms"
    assert substitute(sql, {}, time_from=FROM, time_to=TO, interval_seconds=30) == (
        "1765000000 1765003600 30s 30000"
    )


def test_sqlstring_quotes_and_doubles_single_quotes() -> None:
    assert sql_string("o'brien") == "'o''brien'"
    assert sql_string("") == "''"
    sql = "WHERE name = ${name:sqlstring}"
    assert substitute(sql, {"name": "x'; DROP TABLE t; --"}, time_from=FROM, time_to=TO) == (
        "WHERE name = 'x''; DROP TABLE t; --'"
    )


UNQUOTED = [
    "WHERE name = $name",
    "WHERE name = '${name}'",
    "WHERE name = ${name:raw}",
    "WHERE name = ${name:singlequote}",
]


@pytest.mark.parametrize("sql", UNQUOTED)
def test_a_variable_interpolated_unquoted_is_refused(sql: str) -> None:
    with pytest.raises(UnsafeSql, match="unquoted"):
        substitute(sql, {"name": "x"}, time_from=FROM, time_to=TO)


def test_unknown_variables_and_macros_are_refused() -> None:
    with pytest.raises(UnsafeSql, match="unknown variable"):
        substitute("${other:sqlstring}", {"name": "x"}, time_from=FROM, time_to=TO)
    with pytest.raises(UnsafeSql, match="unknown macro"):
        substitute("$__timeGroupAlias(t, 1m)", {}, time_from=FROM, time_to=TO)
    with pytest.raises(UnsafeSql, match="column name"):
        substitute("$__timeFilter(a OR 1=1)", {}, time_from=FROM, time_to=TO)


def test_variables_come_first_as_in_grafana() -> None:
    # The front end interpolates the variables before the back end's macros: a macro typed in
    # a search box is expanded inside the quoted literal, where it stays text.
    sql = "${q:sqlstring}"
    assert substitute(sql, {"q": "$__interval"}, time_from=FROM, time_to=TO) == "'60s'"
