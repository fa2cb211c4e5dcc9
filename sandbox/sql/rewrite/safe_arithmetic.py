"""Pass: arithmetic runs in DOUBLE so that no row value can make the query fail.

Integer arithmetic can overflow and raise an error that depends on a single
row's value; an error is a signal. In DOUBLE, overflow gives inf, which the
clamp later bounds.
"""

from __future__ import annotations

from sqlglot import exp

from .context import RewriteContext

ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.Neg, exp.Abs)
INTEGER_TYPES = {"int16", "int32", "int64"}


def safe_arithmetic(tree: exp.Select, ctx: RewriteContext) -> exp.Select:
    lookup = ctx.analysis.sources.column
    for col in list(tree.find_all(exp.Column)):
        if not col.table or not isinstance(col.parent, ARITHMETIC):
            continue
        if col.table in ctx.analysis.sources.tables and lookup(col).type in INTEGER_TYPES:
            col.replace(exp.Cast(this=col.copy(), to=exp.DataType.build("DOUBLE")))
    return tree
