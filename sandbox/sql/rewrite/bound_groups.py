"""Pass: each privacy unit contributes to at most ``max_groups_per_unit`` groups.

Only applied to grouped queries when the policy's group bound is tighter than
the row bound and some measurement's sensitivity depends on it. The groups a
unit keeps are chosen at random: ``random()`` is materialised in a subquery,
since DuckDB refuses a volatile window ORDER BY.
"""

from __future__ import annotations

from sqlglot import exp

from .context import RewriteContext
from .measurements import REL

GROUPS = "__groups"


def bound_groups(tree: exp.Select, ctx: RewriteContext) -> exp.Select:
    a = ctx.analysis
    limit = ctx.policy.privacy.max_groups_per_unit
    # Only measurements whose sensitivity depends on how many groups a unit touches gain
    # from the bound: distinct-unit counts, quantiles and the threshold of private keys.
    # Counts and sums are bounded by the unit's total rows either way (L1 = rows x bound).
    needs = ctx.threshold is not None or any(
        m.kind in ("count_units", "histogram") for m in ctx.measurements)
    # without a row bound (units_only) the group bound is the only bound on groups
    if not a.grouped or not needs or (limit >= a.rows_per_unit and not ctx.units_only):
        return tree
    ctx.group_bounded = True
    rel_sub = tree.args["from_"].this
    rel = rel_sub.this
    keys = [f"__k{i}" for i in range(len(a.keys))]
    distinct = exp.select("__unit", *keys, exp.alias_(exp.Rand(), "__gr")).from_(REL, copy=False) \
        .group_by("__unit", *keys, copy=False)
    window = exp.Window(this=exp.RowNumber(), partition_by=[exp.column("__unit")],
                        order=exp.Order(expressions=[exp.Ordered(this=exp.column("__gr"))]))
    sub = exp.Subquery(this=distinct, alias=exp.TableAlias(this=exp.to_identifier("__g")))
    ranked = exp.select("__unit", *keys, exp.alias_(window, "__gn")).from_(sub, copy=False)
    on: exp.Expr = exp.EQ(this=exp.column("__unit", table=REL),
                          expression=exp.column("__unit", table=GROUPS))
    for k in keys:
        on = exp.and_(on, exp.NullSafeEQ(this=exp.column(k, table=REL),
                                         expression=exp.column(k, table=GROUPS)))
    tree.set("from_", exp.From(this=exp.to_table(REL)))
    tree = tree.join(exp.to_table(GROUPS), on=on, copy=False)
    tree = tree.where(exp.LTE(this=exp.column("__gn", table=GROUPS),
                              expression=exp.Literal.number(limit)), copy=False)
    tree = tree.with_(REL, as_=rel, copy=False).with_(GROUPS, as_=ranked, copy=False)
    return tree
