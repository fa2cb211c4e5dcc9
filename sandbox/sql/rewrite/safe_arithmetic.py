"""Pass: arithmetic runs in DOUBLE so that no row value can make the query fail.

Integer arithmetic can overflow and raise an error that depends on a single
row's value; an error is a signal. Every number operand of + - * / % (a column,
a literal, or anything wrapping them: COALESCE, CASE, TRY_CAST, parentheses) is
cast to DOUBLE, where overflow gives inf, which the clamp later bounds. Date
arithmetic stays as it is; what could still fail on a value is made total by the
measurements pass (``TRY``). One failure ``TRY`` does not catch is handled here too:
``date_trunc('week', d)`` of the smallest DATEs, so a week truncation of a date reads the
date as a TIMESTAMP (``TRY_CAST``).
"""

from __future__ import annotations

from typing import TypeVar

from sqlglot import exp

from ..allowlist import AGGREGATES
from ..intervals import kind
from ..resolve import Sources
from .context import RewriteContext

E = TypeVar("E", bound=exp.Expression)

ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)
DOUBLE = exp.DataType.build("DOUBLE")


def safe_arithmetic(tree: exp.Select, ctx: RewriteContext) -> exp.Select:
    return make_safe(tree, ctx.analysis.sources)


def make_safe(tree: E, sources: Sources) -> E:
    """Cast the number operands of row-level arithmetic in ``tree`` to DOUBLE, in place.

    The measurements pass applies it to copies of the analysis' expressions (keys,
    aggregate arguments, FILTER conditions); the pass to the query's own copy."""
    lookup = sources.column

    def is_double(node: exp.Expression) -> bool:
        """Already DOUBLE: float columns, casts to DOUBLE, arithmetic (operands are cast)."""
        if isinstance(node, exp.Paren):
            return is_double(node.this)
        if isinstance(node, exp.Column):
            return node.table in sources.tables and lookup(node).type == "float64"
        if isinstance(node, exp.Cast):
            return node.to.is_type("double")
        if isinstance(node, exp.Neg | exp.Abs | exp.Floor | exp.Ceil | exp.Round):
            return is_double(node.this)
        return isinstance(node, ARITHMETIC)

    def to_double(node: exp.Expression) -> None:
        if not is_double(node):  # wrap in place: nested nodes keep their identity
            cast = exp.Cast(to=DOUBLE.copy())
            node.replace(cast)
            cast.set("this", node)

    def row_level(node: exp.Expr) -> bool:
        """Over columns of the query's tables (not aggregates or output aliases, which
        post-processing evaluates on noisy values)."""
        return not node.find(*AGGREGATES) and all(
            c.table in sources.tables for c in node.find_all(exp.Column))

    for trunc in list(tree.find_all(exp.TimestampTrunc, exp.DateTrunc)):
        # DuckDB's TRY does not catch date_trunc('week', d) failing on the smallest DATEs
        # (it subtracts days below the type's minimum); through a TIMESTAMP it cannot fail,
        # and a date beyond the TIMESTAMP range becomes NULL (the engine's result is a
        # TIMESTAMP either way).
        unit = trunc.args.get("unit")
        arg = trunc.this
        if unit is not None and unit.name.upper() == "WEEK" and row_level(trunc) and \
                kind(arg, lookup) == "date" and \
                not (isinstance(arg, exp.TryCast) and arg.to.is_type("timestamp")):
            cast = exp.TryCast(to=exp.DataType.build("TIMESTAMP"))
            arg.replace(cast)
            cast.set("this", arg)
    for unary in list(tree.find_all(exp.Neg, exp.Abs)):
        if row_level(unary) and not _literal(unary.this) and \
                kind(unary.this, lookup) == "number":
            to_double(unary.this)
    for node in list(tree.find_all(*ARITHMETIC)):
        if not row_level(node):
            continue
        operands = (node.this, node.expression)
        if "date" in (kind(operands[0], lookup), kind(operands[1], lookup)):
            continue
        both_constant = all(_literal(o) for o in operands)
        for operand in operands:
            # A constant beside a DOUBLE becomes DOUBLE; two constants are folded in the
            # narrowest integer type unless one is cast.
            if both_constant or not _literal(operand):
                to_double(operand)
    return tree


def _literal(node: exp.Expression) -> bool:
    if isinstance(node, exp.Paren | exp.Neg):
        return _literal(node.this)
    return isinstance(node, exp.Literal)
