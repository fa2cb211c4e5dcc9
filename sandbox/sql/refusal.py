"""Refusals: every rule has a stable code, a message and a way to rephrase.

A refusal names the rule and the position in the SQL, never data. The table
``RULES`` is the documented list (docs/gate.md is checked against it).
"""

from __future__ import annotations

from sqlglot import exp

from ..errors import SandboxError

RULES: dict[str, str] = {
    "gate.syntax": "The SQL could not be parsed.",
    "gate.too_large": "The SQL is longer or more deeply nested than the gate accepts.",
    "gate.multiple_statements": "Exactly one statement per request.",
    "gate.not_a_query": "Only SELECT queries; no DDL, DML, settings, pragmas or commands.",
    "gate.set_operation": "UNION, INTERSECT and EXCEPT are not answered.",
    "gate.unknown_table": "Only the scenario's tables exist; no paths, schemas or catalogs.",
    "gate.table_function": "Table functions (read_*, glob, query, duckdb_*, ...) are refused.",
    "gate.unknown_column": "Only the columns the scenario exposes exist.",
    "gate.construct_not_allowed": "A construct outside the allowlist (structs, JSON, lambdas, "
                                  "positional columns, parameters, intervals, ...).",
    "gate.function_not_allowed": "A function outside the allowlist.",
    "gate.strict_cast": "CAST of a column can fail on a value; use TRY_CAST.",
    "gate.column_alias_list": "Table aliases that rename columns, t(a, b), are refused.",
    "gate.whole_row": "A table alias used as a value returns whole rows.",
    "gate.star": "SELECT * and t.* return rows; name columns inside aggregates.",
    "gate.row_level_output": "Every output must be an aggregate or a grouping key.",
    "gate.distinct_rows": "SELECT DISTINCT returns rows; use GROUP BY with COUNT(*).",
    "gate.window": "Window functions and QUALIFY work on rows and are refused.",
    "gate.aggregate_not_allowed": "MIN, MAX, FIRST, ANY_VALUE, ARG_MAX, string_agg, list, "
                                  "mode, histogram and similar reveal single values.",
    "gate.count_distinct": "COUNT(DISTINCT ...) only of the privacy unit.",
    "gate.unit_misuse": "The privacy unit may only be joined on or counted distinct.",
    "gate.filter_column": "A filter column may only appear in WHERE.",
    "gate.group_by": "GROUP BY only dimensions or expressions over dimensions and measures.",
    "gate.unbounded_measure": "SUM/AVG/VAR/quantiles need an expression with known bounds.",
    "gate.join": "Only declared joins: on the privacy unit, or to a public lookup table.",
    "gate.subquery": "Subqueries and CTEs must filter, join or derive row-level columns, be "
                     "one aggregation the outer query only presents, or aggregate per unit.",
    "gate.quantile_fraction": "Quantile fractions must be one constant between 0 and 1.",
    "gate.epsilon": "Epsilon must be positive and at most the scenario's maximum.",
    "gate.order_limit": "ORDER BY and LIMIT apply to the aggregated result only.",
    "gate.public_only": "A query must aggregate over a private table.",
    "gate.type_mismatch": "Comparisons, IN lists and CASE results must not mix text, numbers "
                          "and dates (a conversion could fail on some rows).",
    "gate.engine_check": "The rewritten query did not bind against a data-free copy of the "
                         "schema (found before any data was read or budget spent).",
    "gate.reserved_name": "Names starting with two underscores are reserved.",
}


# Clause-level nodes: a refused part without a located token of its own is not pointed at
# through these (the caret would land on an unrelated part of the query).
_CLAUSES: tuple[type[exp.Expr], ...] = (
    exp.Query, exp.Subquery, exp.From, exp.Join, exp.Where, exp.Group, exp.Having,
    exp.Order, exp.With, exp.CTE, exp.Limit, exp.Offset, exp.Qualify)


def position(node: exp.Expr | None) -> tuple[int, int] | None:
    """(line, column) where ``node`` starts: its earliest token that sqlglot located (a
    node's own token is not always the first, e.g. ``a || b`` is located at ``b``); for a
    node with no located token (``?``, ``#1``, ``INTERVAL 1 DAY``), the start of the
    nearest enclosing expression that has one."""
    while node is not None:
        found = [_start(n) for n in node.walk() if isinstance(n, exp.Expression)]
        located = [p for p in found if p is not None]
        if located:
            return min(located)
        node = node.parent if isinstance(node, exp.Expression) else None
        if isinstance(node, _CLAUSES):
            return None
    return None


def _start(node: exp.Expression) -> tuple[int, int] | None:
    meta = getattr(node, "_meta", None) or {}
    if "line" not in meta:
        return None
    start = meta.get("col", 1) - (meta.get("end", 0) - meta.get("start", 0))
    return meta["line"], max(start, 1)


class Refusal(SandboxError):
    """The gate will not answer this query; nothing was executed or charged."""

    code = "gate.refused"

    def __init__(self, rule: str, message: str, hint: str | None = None,
                 node: exp.Expr | None = None, *,
                 at: tuple[int, int] | None = None) -> None:
        """``node`` locates the refusal in the SQL; ``at`` gives (line, column) directly
        (e.g. where the parser stopped) when there is no node."""
        if rule not in RULES:  # pragma: no cover - a programming error
            raise ValueError(f"unknown rule {rule}")
        super().__init__(message, hint)
        self.code = rule
        self.position = position(node) if node is not None else at

    def to_dict(self) -> dict[str, object]:  # adds int line/column
        d = super().to_dict()
        if self.position:
            d["line"], d["column"] = self.position
        return d
