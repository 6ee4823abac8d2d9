"""exposition/promql.py's selector: parsed strictly, added to every exporter series once."""

from __future__ import annotations

import promql_parser
import pytest

from celery_events_exporter.exposition import promql as q

pytestmark = pytest.mark.unit

SELECTOR = 'cluster="eu", namespace=~"celery-.*"'


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up == 0", f"up{{{SELECTOR}}} == 0"),
        (
            'absent(up{job="x"})',
            f'absent(up{{{SELECTOR}, job="x"}})',
        ),
        (
            "max without (instance, pod) (rate(celery_task_failed_total[5m]))",
            f"max without (instance, pod) (rate(celery_task_failed_total{{{SELECTOR}}}[5m]))",
        ),
        # A matcher value holding a brace or a series name is a string, not a selection.
        (
            'celery_worker_online{worker=~"a}celery_queue_length"} == 0',
            f'celery_worker_online{{{SELECTOR}, worker=~"a}}celery_queue_length"}} == 0',
        ),
        ("celery_queue_length{}", f"celery_queue_length{{{SELECTOR}}}"),
        (
            "delta((celery_worker_uncounted_tasks)[15m:]) > 0",
            f"delta((celery_worker_uncounted_tasks{{{SELECTOR}}})[15m:]) > 0",
        ),
        (
            "celery_task_orphaned_total unless celery_task_orphaned_total offset 15m",
            f"celery_task_orphaned_total{{{SELECTOR}}} unless "
            f"celery_task_orphaned_total{{{SELECTOR}}} offset 15m",
        ),
        # Recorded series and label names are left alone.
        (
            "task:celery_task_failure_ratio:rate5m > 0.1 and on (task) up",
            f"task:celery_task_failure_ratio:rate5m > 0.1 and on (task) up{{{SELECTOR}}}",
        ),
    ],
)
def test_every_exporter_series_gets_the_selector(expr: str, expected: str) -> None:
    selected = q.with_selector(expr, SELECTOR)
    assert selected == expected
    promql_parser.parse(selected)


def test_an_empty_selector_changes_nothing() -> None:
    expr = "sum by (task) (rate(celery_task_failed_total[5m]))"
    assert q.with_selector(expr, "") is expr
    assert q.with_selector(expr, "  ") is expr


def test_only_the_named_series_when_names_are_given() -> None:
    assert q.with_selector("up + celery_queue_length", 'a="b"', names={"up"}) == (
        'up{a="b"} + celery_queue_length'
    )


def test_a_selector_is_parsed_into_matchers() -> None:
    assert q.parse_selector(' job = "a\\"b" ,x!~"y", z!="",') == (
        ("job", "=", '"a\\"b"'),
        ("x", "!~", '"y"'),
        ("z", "!=", '""'),
    )
    assert q.selector_labels('job="a", cluster=~"e.*"') == {"job", "cluster"}
    assert q.parse_selector("") == ()


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("job=celery", "not a label selector"),
        ('job="a" cluster="b"', "separated by commas"),
        ('__name__="up"', "may not name the metric"),
        ('{job="a"}', "not a label selector"),
        ('job="a\nb"', "not a label selector"),
    ],
)
def test_a_bad_selector_is_refused_with_a_reason(selector: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        q.parse_selector(selector)
    with pytest.raises(ValueError, match=message):
        q.with_selector("up", selector)
