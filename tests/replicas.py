"""Checks of the replica de-duplication contract on PromQL text (dashboards and rules alike).

Two exporters of one broker export the same fleet series, differing only in ``instance`` and
``pod``; every selector of a fleet series must sit directly under ``max without (instance, pod)``,
with at most a ``rate()``/``increase()`` (or a gauge's ``deriv()``) between them (see
``celery_events_exporter.exposition.promql``).
"""

from __future__ import annotations

from typing import Any

import promql_parser

from celery_events_exporter.exposition import promql

_CHANGES = {"rate", "increase", "deriv"}


def _is_dedup(node: Any) -> bool:
    if not isinstance(node, promql_parser.AggregateExpr) or str(node.op) != "max":
        return False
    modifier = node.modifier
    return (
        modifier is not None
        and modifier.type == promql_parser.AggModifierType.Without
        and sorted(modifier.labels) == sorted(promql.REPLICA_LABELS)
    )


def undeduplicated(expr: str) -> list[str]:
    """Names of the fleet series that ``expr`` reads without folding the replicas first."""
    found: list[str] = []

    def walk(node: Any, guarded: bool) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or ""
            # Recorded series (level:metric:operations) were de-duplicated by their rule.
            per_instance = name.startswith(promql.SELF_PREFIX) or name == "up" or ":" in name
            if not guarded and not per_instance:
                found.append(name)
        elif isinstance(node, promql_parser.MatrixSelector):
            walk(node.vector_selector, guarded)
        elif isinstance(node, promql_parser.ParenExpr):
            walk(node.expr, guarded)
        elif isinstance(node, promql_parser.Call):
            # Only rate/increase/deriv may stand between the selector and the de-duplication.
            keep = guarded and node.func.name in _CHANGES
            for arg in node.args:
                walk(arg, keep)
        elif isinstance(node, promql_parser.AggregateExpr):
            walk(node.expr, _is_dedup(node))
            if node.param is not None:
                walk(node.param, False)
        elif isinstance(node, promql_parser.BinaryExpr):
            walk(node.lhs, False)
            walk(node.rhs, False)
        elif isinstance(node, promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
            walk(node.expr, False)

    walk(promql_parser.parse(expr), False)
    return found
