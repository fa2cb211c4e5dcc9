"""Pass 1b: rewrite equivalent spellings into the one form the later passes check.

Analysts write the same question in several ways. Each rewrite here is an exact SQL
equivalence over any data, so it changes what is answered, never what is released:

* ``percentile_cont(f) WITHIN GROUP (ORDER BY x [DESC])`` is ``quantile_cont(x, f)``
  (``1 - f`` when descending), and likewise for ``percentile_disc``;
* ``a JOIN b USING (k)`` is ``a JOIN b ON a.k = b.k``; an unqualified ``k`` elsewhere is
  the left table's (in an inner join both are equal; in a left join the right one is
  NULL whenever the left one is);
* an outer query that only renames, computes over, filters, orders or limits the output
  of one aggregating CTE or subquery is that aggregation with ``HAVING``, ``ORDER BY``
  and ``LIMIT``: its filters apply to released groups, which is post-processing.

Nodes are moved, not rebuilt, so a later refusal still points at what the analyst wrote.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from sqlglot import exp

from ..policy import Policy
from .refusal import Refusal

JOIN_HINT = "write JOIN ... ON a.key = b.key"


def normalise(tree: exp.Select, policy: Policy) -> exp.Select:
    transformed = tree.transform(_within_group, copy=False)
    assert isinstance(transformed, exp.Select)  # the root is a SELECT and stays one
    tree = transformed
    for select in list(tree.find_all(exp.Select)):
        _join_using(select, policy)
    return _drop_unused_ctes(_flatten_aggregating_source(tree))


def _drop_unused_ctes(tree: exp.Select) -> exp.Select:
    """A CTE nothing reads changes nothing (and would not fold into one aggregation)."""
    with_ = tree.args.get("with_")
    while with_ is not None:
        read = {t.name for t in tree.find_all(exp.Table)
                if (owner := t.find_ancestor(exp.CTE)) is None or owner.alias_or_name != t.name}
        unused = [c for c in with_.expressions if c.alias_or_name not in read]
        if not unused:
            break
        kept = [c for c in with_.expressions if c not in unused]
        with_.set("expressions", kept)
        if not kept:
            tree.set("with_", None)
            break
    return tree


def _within_group(node: exp.Expression) -> exp.Expression:
    if not isinstance(node, exp.WithinGroup):
        return node
    fn, order = node.this, node.expression
    if not isinstance(fn, exp.PercentileCont | exp.PercentileDisc) or fn.expression or \
            not isinstance(order, exp.Order) or len(order.expressions) != 1:
        return node  # refused later, as written
    ordered = order.expressions[0]
    fraction = fn.this
    if ordered.args.get("desc"):  # the f-quantile of descending values: 1 - f ascending
        if not (isinstance(fraction, exp.Literal) and fraction.is_number):
            return node
        try:
            fraction = exp.Literal.number(str(Decimal(1) - Decimal(fraction.this)))
        except InvalidOperation:
            return node
    return type(fn)(this=ordered.this, expression=fraction)


def _join_using(select: exp.Select, policy: Policy) -> None:
    """USING (k) becomes ON left.k = right.k, the left being the nearest table before the
    join that has k (FROM first)."""
    joins = select.args.get("joins") or []
    if not any(j.args.get("using") for j in joins):
        return
    source = select.args.get("from_")
    seen: list[exp.Expression] = [source.this] if source is not None else []
    used: dict[str, str] = {}  # USING column -> the left alias unqualified references mean
    for join in joins:
        names = join.args.get("using") or []
        if names:
            right = join.this.alias_or_name
            on: exp.Expr | None = None
            for ident in names:
                left = _left_with(seen, ident.name, policy)
                if left is None:
                    raise Refusal("gate.join", f"no table before this join has the column "
                                  f"'{ident.name}' named in USING", JOIN_HINT, join)
                cond = exp.EQ(this=exp.column(ident.name, table=left),
                              expression=exp.column(ident.name, table=right))
                on = cond if on is None else exp.and_(on, cond)
                used.setdefault(ident.name, left)
            join.set("using", None)
            join.set("on", on)
        seen.append(join.this)
    for col in select.find_all(exp.Column):
        if not col.table and col.name in used and col.find_ancestor(exp.Select) is select \
                and not _is_output_alias(col, select):
            col.set("table", exp.to_identifier(used[col.name]))


def _left_with(seen: list[exp.Expression], column: str, policy: Policy) -> str | None:
    for source in reversed(seen):
        if isinstance(source, exp.Table) and source.name in policy.tables and \
                column in policy.tables[source.name].columns:
            return source.alias_or_name
        if isinstance(source, exp.Subquery | exp.Table):  # a CTE or subquery: its outputs
            query = source.this if isinstance(source, exp.Subquery) else None
            if isinstance(query, exp.Select) and column in query.named_selects:
                return source.alias_or_name
    return None


def _is_output_alias(col: exp.Column, select: exp.Select) -> bool:
    return isinstance(col.parent, exp.Ordered | exp.Having) and \
        col.name in {e.alias for e in select.expressions if isinstance(e, exp.Alias)}


def _aggregating(select: exp.Select) -> bool:
    from .allowlist import AGGREGATES

    return bool(select.args.get("group")) or any(e.find(*AGGREGATES) for e in select.expressions)


def _flatten_aggregating_source(outer: exp.Select) -> exp.Select:
    """``SELECT <renames/arithmetic> FROM (<aggregation>) [WHERE] [ORDER BY] [LIMIT]`` is the
    aggregation itself, the outer WHERE becoming HAVING. Anything more in the outer query
    (joins, grouping, aggregates, DISTINCT) is left as written, for the later passes."""
    source = outer.args.get("from_")
    if source is None or outer.args.get("joins") or outer.args.get("group") or \
            outer.args.get("having") or outer.args.get("distinct") or _aggregating(outer):
        return outer
    inner, cte = _source_query(outer, source.this)
    if inner is None or not isinstance(inner, exp.Select) or not _aggregating(inner) or \
            any(inner.args.get(a) for a in ("order", "limit", "offset", "distinct")):
        return outer
    outputs: dict[str, exp.Expr] = {e.alias_or_name: e.unalias() for e in inner.expressions}
    if len(outputs) != len(inner.expressions) or "" in outputs:
        return outer  # unnamed or repeated outputs: nothing to refer to safely
    name = source.this.alias_or_name

    def substitute(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.table in ("", name) and node.name in outputs:
            return outputs[node.name].copy()
        return node

    merged = inner.copy()
    merged.set("expressions", [_projection(e, substitute) for e in outer.expressions])
    where = outer.args.get("where")
    if where is not None:
        merged = merged.having(where.this.transform(substitute), copy=False)
    aliases = {e.alias_or_name for e in outer.expressions}

    def order_term(node: exp.Expr) -> exp.Expr:
        """ORDER BY names an output of the outer query first (SQL's rule), then inner ones."""
        if isinstance(node, exp.Column) and not node.table and node.name in aliases:
            return node
        return substitute(node)

    for arg in ("order", "limit", "offset"):
        if outer.args.get(arg) is not None:
            merged.set(arg, outer.args[arg].transform(order_term if arg == "order"
                                                      else substitute))
    # the CTEs the aggregation may read: the outer query's other ones, then its own (which
    # may read those)
    with_, own = outer.args.get("with_"), merged.args.get("with_")
    rest = [c for c in (with_.expressions if with_ is not None else []) if c is not cte]
    ctes = [*(c.copy() for c in rest), *(own.expressions if own is not None else [])]
    if ctes:
        merged.set("with_", exp.With(expressions=ctes))
    return merged


def _projection(e: exp.Expression, substitute: Any) -> exp.Expr:
    """An outer output over the inner ones, under the outer output's name."""
    body = e.unalias().copy().transform(substitute)
    if isinstance(body, exp.Column) and body.name == e.alias_or_name:
        return body
    return exp.alias_(body, e.alias_or_name)


def _source_query(outer: exp.Select, source: exp.Expression
                  ) -> tuple[exp.Expression | None, exp.CTE | None]:
    """The query a FROM item stands for: a subquery's, or a CTE's used only there."""
    if isinstance(source, exp.Subquery):
        return source.this, None
    if not isinstance(source, exp.Table) or outer.args.get("with_") is None:
        return None, None
    for cte in outer.args["with_"].expressions:
        if cte.alias_or_name == source.name:
            uses = [t for t in outer.find_all(exp.Table) if t.name == source.name]
            return (cte.this, cte) if len(uses) == 1 else (None, None)
    return None, None
