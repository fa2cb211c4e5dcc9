"""Pass 4: check the aggregation shape of the flat query and describe it.

The result, ``Analysis``, says what the rewrite must compute: grouping keys
(with their domain when public), the aggregates and their bounded arguments,
the joins, the privacy unit, and the user's SELECT/HAVING/ORDER BY/LIMIT to
apply later to the noisy values only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from ..policy import UNIT, Policy
from .allowlist import AGGREGATES
from .intervals import Bounds, bounds, integral, key_domain, mixed_kinds
from .refusal import Refusal
from .resolve import Sources

MAX_LIMIT = 100_000
UNIT_HINT = ("the privacy unit may only appear in JOIN ... ON and in COUNT(DISTINCT unit); "
             "to count people use COUNT(DISTINCT <unit>)")


@dataclass
class KeySpec:
    expr: exp.Expression
    domain: list[Any] | None  # None: private keys (released only above a noisy threshold)
    cast: str | None = None  # engine type the key is cast to, so its values match the domain


@dataclass
class AggSpec:
    """One aggregate of the user's query, in a normal form the rewrite understands."""

    kind: str  # count | count_units | sum | avg | var | stddev | quantile
    node: exp.Expression  # the user's aggregate node (replaced in post-processing)
    arg: exp.Expression | None = None  # row-level argument (None for COUNT(*))
    condition: exp.Expression | None = None  # FILTER (WHERE ...) condition
    bounds: Bounds | None = None
    integer: bool = False
    fraction: float | None = None
    sample: bool = False  # VAR_SAMP / STDDEV_SAMP

    @property
    def key(self) -> str:
        parts = [self.kind, self.arg.sql("duckdb") if self.arg is not None else "*",
                 self.condition.sql("duckdb") if self.condition is not None else "",
                 str(self.fraction), str(self.sample)]
        return "|".join(parts)


@dataclass
class Analysis:
    tree: exp.Select
    sources: Sources
    unit_columns: dict[str, str]  # private alias -> its unit column
    rows_per_unit: int  # bound on rows one unit contributes to the joined relation
    keys: list[KeySpec] = field(default_factory=list)
    aggs: list[AggSpec] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None

    @property
    def grouped(self) -> bool:
        return bool(self.keys)

    @property
    def public_keys(self) -> bool:
        return all(k.domain is not None for k in self.keys)


def analyse(tree: exp.Select, sources: Sources, policy: Policy) -> Analysis:
    lookup = sources.column
    private = {a: t for a, t in sources.tables.items() if not t.public}
    if not private:
        raise Refusal("gate.public_only", "the query reads only public lookup tables",
                      "aggregate over a private table and join the lookup table to it")
    _check_joins(tree, sources, policy)
    rows = 1
    for t in private.values():
        rows *= t.max_rows_per_unit
    analysis = Analysis(tree, sources, {a: str(t.privacy_unit) for a, t in private.items()},
                        rows)
    where = tree.args.get("where")
    if where is not None:
        _check_row_expr(where.this, lookup, "WHERE", allow_filter=True)
        _check_kinds(where.this, lookup)
        if where.find(*AGGREGATES):
            raise Refusal("gate.row_level_output", "aggregates cannot appear in WHERE",
                          "move the condition on aggregates to HAVING", where.find(*AGGREGATES))

    group = tree.args.get("group")
    for g in (group.expressions if group else []):
        analysis.keys.append(_key(g, lookup))

    aggs: dict[str, AggSpec] = {}
    for item in tree.expressions:
        _check_output(item.unalias(), analysis, lookup, "SELECT", aggs)
    if not aggs:
        raise Refusal("gate.row_level_output", "the query has no aggregate: it would return "
                      "rows", "aggregate, e.g. SELECT district, COUNT(*) FROM persons GROUP "
                      "BY district", tree)
    having = tree.args.get("having")
    if having is not None:
        _check_output(having.this, analysis, lookup, "HAVING", aggs)
    order = tree.args.get("order")
    for o in (order.expressions if order else []):
        target = o.this
        if isinstance(target, exp.Column) and not target.table:
            continue  # an output alias
        _check_output(target, analysis, lookup, "ORDER BY", aggs)
    analysis.aggs = list(aggs.values())
    analysis.limit = _int_clause(tree, "limit")
    analysis.offset = _int_clause(tree, "offset")
    return analysis


def _check_joins(tree: exp.Select, sources: Sources, policy: Policy) -> None:
    """Each join compares the table it brings in with tables brought in before it, on
    declared keys only; a private table after the first is brought in on its privacy unit.

    Then every private row of a joined row belongs to the same unit, and a unit's rows in
    the join are at most the product of the tables' row bounds (lookup tables are unique on
    their join keys, checked against the data before execution)."""
    first = tree.args["from_"].this
    earlier = [first.alias_or_name]
    for join in tree.args.get("joins") or []:
        new = join.this.alias_or_name
        new_t = sources.tables[new]
        on_unit = False
        for cond in conjuncts(join.args["on"]):
            if not (isinstance(cond, exp.EQ) and isinstance(cond.this, exp.Column)
                    and isinstance(cond.expression, exp.Column)):
                raise Refusal("gate.join", "join conditions must be equalities of two columns",
                              "write ON a.key = b.key with a declared key; filter in WHERE",
                              cond)
            a, b = cond.this, cond.expression
            other = b.table if a.table == new else a.table
            if new not in (a.table, b.table) or other == new or other not in earlier:
                raise Refusal("gate.join", f"the condition {cond.sql('duckdb')} must compare "
                              f"a column of '{new}' (the table this JOIN brings in) with a "
                              "table joined before it", "put each condition in the ON of the "
                              "join that brings in its table; filter in WHERE", cond)
            declared = policy.join_for(sources.origin(a.table, a.name),
                                       sources.origin(b.table, b.name))
            if declared is None:
                raise Refusal("gate.join", f"the join {cond.sql('duckdb')} is not declared by "
                              "this scenario", _joins_hint(policy), cond)
            on_unit = on_unit or declared.kind == "unit"
        if not new_t.public and not on_unit and any(
                not sources.tables[e].public for e in earlier):
            raise Refusal("gate.join", f"the private table '{new}' is joined without its "
                          "privacy unit, so one unit's rows could be multiplied",
                          f"join it with ON {new}.{new_t.privacy_unit} = <an earlier private "
                          f"table>.<its unit>; {_joins_hint(policy)}", join)
        earlier.append(new)


def _joins_hint(policy: Policy) -> str:
    joins = [f"{j.left[0]}.{j.left[1]} = {j.right[0]}.{j.right[1]}" for j in policy.joins]
    return "declared joins: " + ("; ".join(joins) if joins else "none")


def conjuncts(node: exp.Expression) -> list[exp.Expression]:
    if isinstance(node, exp.Paren):
        return conjuncts(node.this)
    if isinstance(node, exp.And):
        return conjuncts(node.this) + conjuncts(node.expression)
    return [node]


def _check_kinds(node: exp.Expression, lookup: Any) -> None:
    bad = mixed_kinds(node, lookup)
    if bad is not None:
        raise Refusal("gate.type_mismatch", f"{bad.sql('duckdb')} mixes text, numbers or dates; "
                      "converting them could fail on some rows", "compare like with like, "
                      "e.g. district = 'Huli' or age = 30; use TRY_CAST to convert", bad)


def _check_row_expr(node: exp.Expression, lookup: Any, where: str,
                    allow_filter: bool) -> None:
    for col in node.find_all(exp.Column):
        role = lookup(col).role
        if role == UNIT:
            raise Refusal("gate.unit_misuse", f"the privacy unit '{col.sql('duckdb')}' cannot "
                          f"be used in {where}", UNIT_HINT, col)
        if role == "filter" and not allow_filter:
            raise Refusal("gate.filter_column", f"'{col.sql('duckdb')}' is a filter column and "
                          f"may only appear in WHERE, not in {where}",
                          "use it in WHERE to restrict rows", col)


def _key(node: exp.Expression, lookup: Any) -> KeySpec:
    if node.find(*AGGREGATES):
        raise Refusal("gate.group_by", "GROUP BY cannot contain aggregates",
                      "group by dimensions; filter aggregates with HAVING", node)
    cols = list(node.find_all(exp.Column))
    if not cols:
        raise Refusal("gate.group_by", "GROUP BY a constant is not meaningful",
                      "group by a dimension", node)
    for col in cols:
        role = lookup(col).role
        if role == UNIT:
            raise Refusal("gate.group_by", "grouping by the privacy unit would release one "
                          "group per person or entity", "group by a dimension instead; to "
                          "count units use COUNT(DISTINCT unit)", col)
    _check_row_expr(node, lookup, "GROUP BY", allow_filter=False)
    _check_kinds(node, lookup)
    if isinstance(node, exp.Column) and lookup(node).role != "dimension":
        raise Refusal("gate.group_by", f"'{node.sql('duckdb')}' is a measure with many "
                      "distinct values and cannot be a group key by itself",
                      f"bin it, e.g. GROUP BY FLOOR({node.sql('duckdb')} / 10) * 10, or a "
                      "CASE expression", node)
    domain, cast = key_domain(node, lookup)
    return KeySpec(node, domain, cast)


def _check_output(node: exp.Expression, analysis: Analysis, lookup: Any, where: str,
                  aggs: dict[str, AggSpec]) -> None:
    """Outputs are keys, or expressions whose columns all sit inside aggregates."""
    for key in analysis.keys:
        if node == key.expr:
            return
    if isinstance(node, exp.Filter) and isinstance(node.this, AGGREGATES):
        node = node.this
    if isinstance(node, AGGREGATES):
        spec = _agg(node, lookup)
        aggs.setdefault(spec.key, spec)
        return
    if isinstance(node, exp.Column):
        if not node.table:
            return  # output alias (HAVING / ORDER BY)
        raise Refusal("gate.row_level_output", f"'{node.sql('duckdb')}' is neither aggregated "
                      "nor a GROUP BY key, so it would release row values",
                      "aggregate it or add it to GROUP BY", node)
    if isinstance(node, exp.Window):  # pragma: no cover - refused by the allowlist
        raise Refusal("gate.window", "window functions are not answered", None, node)
    for child in node.iter_expressions():
        _check_output(child, analysis, lookup, where, aggs)


def _agg(node: exp.Expression, lookup: Any) -> AggSpec:
    condition = None
    if isinstance(node.parent, exp.Filter):
        condition = node.parent.expression.this
        _check_row_expr(condition, lookup, "FILTER (WHERE ...)", allow_filter=True)
        _check_kinds(condition, lookup)
    if any(a is not node and isinstance(a, AGGREGATES) for a in node.walk()):
        raise Refusal("gate.row_level_output", "aggregates cannot be nested",
                      "aggregate once; combine aggregates with arithmetic, e.g. "
                      "SUM(x) / COUNT(*)", node)
    if isinstance(node, exp.Count):
        arg = node.this
        if isinstance(arg, exp.Star) or arg is None:
            return AggSpec("count", node, None, condition)
        if isinstance(arg, exp.Distinct):
            inner = arg.expressions
            if len(inner) == 1 and isinstance(inner[0], exp.Column) and \
                    lookup(inner[0]).role == UNIT:
                return AggSpec("count_units", node, inner[0], condition)
            raise Refusal("gate.count_distinct", "COUNT(DISTINCT ...) is only answered for the "
                          "privacy unit", "use COUNT(DISTINCT <privacy unit>), or GROUP BY the "
                          "column and COUNT(*)", node)
        for col in arg.find_all(exp.Column):
            if lookup(col).role == UNIT and arg is not col:
                raise Refusal("gate.unit_misuse", "the privacy unit cannot be used in "
                              "expressions", UNIT_HINT, col)
        _check_kinds(arg, lookup)
        return AggSpec("count", node, arg, condition)

    arg = node.this
    _check_row_expr(arg, lookup, node.sql_name() if isinstance(node, exp.Func) else
                    node.key.upper(), allow_filter=False)
    _check_kinds(arg, lookup)
    b = bounds(arg, lookup)
    if b is None:
        raise Refusal("gate.unbounded_measure", f"the bounds of {arg.sql('duckdb')} are not "
                      "known, so its contribution cannot be limited",
                      "aggregate a measure, or an expression of measures and constants "
                      "(e.g. amount / 12, CASE WHEN ... THEN amount ELSE 0 END), or clamp it "
                      "with LEAST(GREATEST(x, lo), hi)", arg)
    integer = integral(arg, lookup)
    if isinstance(node, exp.Sum):
        return AggSpec("sum", node, arg, condition, b, integer)
    if isinstance(node, exp.Avg):
        return AggSpec("avg", node, arg, condition, b, integer)
    if isinstance(node, exp.Variance | exp.VariancePop):
        return AggSpec("var", node, arg, condition, b, integer,
                       sample=isinstance(node, exp.Variance))
    if isinstance(node, exp.Stddev | exp.StddevPop | exp.StddevSamp):
        return AggSpec("stddev", node, arg, condition, b, integer,
                       sample=not isinstance(node, exp.StddevPop))
    if isinstance(node, exp.Median):
        return AggSpec("quantile", node, arg, condition, b, integer, fraction=0.5)
    fraction_node = node.args.get("quantile") or node.args.get("expression")
    fraction = _fraction(fraction_node)
    if fraction is None:
        raise Refusal("gate.quantile_fraction", "the quantile fraction must be one constant "
                      "strictly between 0 and 1", "e.g. QUANTILE_CONT(income, 0.9); ask for "
                      "several quantiles as separate columns", fraction_node or node)
    return AggSpec("quantile", node, arg, condition, b, integer, fraction=fraction)


def _fraction(node: exp.Expression | None) -> float | None:
    if not isinstance(node, exp.Literal) or node.is_string:
        return None
    try:
        value = float(node.this)
    except ValueError:
        return None
    return value if 0 < value < 1 else None


def _int_clause(tree: exp.Select, arg: str) -> int | None:
    clause = tree.args.get(arg)
    if clause is None:
        return None
    value = clause.expression if isinstance(clause, exp.Limit | exp.Offset) else clause
    if isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit() and \
            int(value.this) <= MAX_LIMIT:
        return int(value.this)
    raise Refusal("gate.order_limit", f"{arg.upper()} must be a whole number up to {MAX_LIMIT}",
                  f"write e.g. {arg.upper()} 10", clause)
