"""Pass: each scenario table becomes a bounded scan of its engine table.

A private table keeps at most ``max_rows_per_unit`` rows per privacy unit: the
engine gives every row a random rank within its unit once, at load
(``__sandbox_rank``), so bounding is a cheap filter and needs no volatile
window here. Only the exposed columns are projected. A query that only counts distinct
units (``RewriteContext.units_only``) is not row-bounded: its sensitivity does not depend
on rows, and bounding would only drop units from the counts.
"""

from __future__ import annotations

from sqlglot import exp

from .context import RewriteContext

RANK = "__sandbox_rank"


def bound_rows(tree: exp.Select, ctx: RewriteContext) -> exp.Select:
    bounded = not ctx.units_only  # distinct-unit counts need no row bound (RewriteContext)
    derived = ctx.analysis.sources.derived
    for table in list(tree.find_all(exp.Table)):
        alias = table.alias_or_name
        if table.name in derived:  # a per-unit aggregation: one row per unit already
            sub = exp.Subquery(this=derived[table.name].select.copy(),
                               alias=exp.TableAlias(this=exp.to_identifier(alias)))
            sub.meta["sandbox_derived"] = True  # its own scope (sandbox.sql.shortcuts)
            table.replace(sub)
            continue
        tp = ctx.policy.tables[table.name]
        scan = exp.select(*[exp.column(c) for c in tp.columns]).from_(
            exp.to_table(tp.engine_table), copy=False)
        if not tp.public and bounded:
            bound = exp.LTE(this=exp.column(RANK),
                            expression=exp.Literal.number(tp.max_rows_per_unit))
            scan = scan.where(bound, copy=False)
            scan.meta["sandbox_rank"] = (tp.engine_table, tp.max_rows_per_unit,
                                         tp.privacy_unit)
        table.replace(exp.Subquery(this=scan, alias=exp.TableAlias(
            this=exp.to_identifier(alias))))
    return tree
