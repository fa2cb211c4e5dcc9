"""Pass: join the declared key list so every public group appears, zeros included.

When every grouping key has a domain known without looking at the data
(declared ``keys``, CASE with literal results, predicates), the released groups
are exactly the cross product of those domains: no group appears or vanishes
because of one unit, so no threshold (and no delta) is needed.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from sqlglot import exp

from ..resolve import DUCKDB_TYPES
from .context import RewriteContext

MAX_PUBLIC_GROUPS = 10_000
KEYS = "__keys"
AGG = "__agg"


def key_rows(ctx: RewriteContext) -> list[tuple[Any, ...]] | None:
    """The cross product of public key domains, or None when keys are private or too many."""
    a = ctx.analysis
    if not a.grouped or not a.public_keys:
        return None
    size = 1
    for k in a.keys:
        size *= len(k.domain or [])
    if size > MAX_PUBLIC_GROUPS:
        return None
    return list(itertools.product(*[k.domain or [] for k in a.keys]))


def _literal(value: Any, to: str | None) -> exp.Expr:
    """A declared key as a constant of the key's engine type (so that the join compares
    like with like, and the engine cannot merge two declared keys into one)."""
    lit: exp.Expr = exp.Literal.string(value.isoformat()) \
        if isinstance(value, dt.date) else exp.convert(value)
    if not to or isinstance(value, str | bool):  # unambiguous as they are
        return lit
    return exp.Cast(this=lit, to=exp.DataType.build(to))


def _key_type(ctx: RewriteContext, i: int) -> str | None:
    key = ctx.analysis.keys[i]
    if key.cast:
        return key.cast
    node = key.expr.unnest() if isinstance(key.expr, exp.Paren) else key.expr
    if isinstance(node, exp.Column):
        return DUCKDB_TYPES[ctx.analysis.sources.column(node).type]
    return "BOOLEAN"


def public_keys(tree: exp.Select, ctx: RewriteContext) -> exp.Select:
    rows = key_rows(ctx)
    if rows is None:
        return tree
    n = len(ctx.analysis.keys)
    names = [f"__k{i}" for i in range(n)]
    types = [_key_type(ctx, i) for i in range(n)]
    values = exp.Values(
        expressions=[exp.Tuple(expressions=[exp.Literal.number(i)] + [
            _literal(v, t) for v, t in zip(row, types, strict=True)])
                     for i, row in enumerate(rows)],
        alias=exp.TableAlias(this=exp.to_identifier(KEYS),
                             columns=[exp.to_identifier(c) for c in ["__ord", *names]]))
    out = exp.select(*[exp.alias_(exp.column(c, table=KEYS), c) for c in names])
    for m in ctx.measurements:
        col = exp.column(m.name, table=AGG)
        value = col if m.kind == "histogram" else exp.Coalesce(
            this=col, expressions=[exp.Literal.number(0)])
        out = out.select(exp.alias_(value, m.name), copy=False)
    on: exp.Expr | None = None
    for c in names:
        cond = exp.NullSafeEQ(this=exp.column(c, table=KEYS), expression=exp.column(c, table=AGG))
        on = cond if on is None else exp.and_(on, cond)
    out = out.from_(values, copy=False).join(
        exp.Subquery(this=tree, alias=exp.TableAlias(this=exp.to_identifier(AGG))),
        on=on, join_type="LEFT", copy=False)
    return out.order_by(exp.column("__ord", table=KEYS), copy=False)
