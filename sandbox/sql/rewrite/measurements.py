"""Pass: replace the user's aggregates by exact, bounded per-group measurements.

The inner relation ``__rel`` holds, per row, the privacy unit, the grouping keys
and one clamped value per measurement; the outer query sums them per group.
Sums are exact integers (fixed point), so float rounding cannot leak; every
value is clamped to its bounds, so one unit moves any sum by at most its bound.

No row value can make the query fail: every row-level expression that could
raise on some value (arithmetic, conversions, date arithmetic) is wrapped in
DuckDB's ``TRY``, which turns that row's value into NULL. A NULL is a value one
row may take anyway, so this changes nothing the sensitivity does not cover.
"""

from __future__ import annotations

import math
from typing import Protocol

from sqlglot import exp

from ..analyse import AggSpec, conjuncts
from ..intervals import kind
from ..refusal import Refusal
from ..resolve import Sources
from .bound_rows import RANK
from .context import FIXED_POINT_DIGITS, QUANTILE_BINS, Measurement, RewriteContext
from .safe_arithmetic import make_safe

REL = "__rel"
MAX_BOUND = 1e15  # larger bounds are refused
# Largest fixed-point value of one row: sums of up to 4.6e8 rows at the bound stay within
# the +-2^62 the integer mechanisms take (beyond that the sum is clipped before noise).
MAX_ROW_FIXED = 1e10
# Row-level nodes that never raise, whatever the row holds (comparisons are type-checked
# by the gate, so they convert nothing at run time).
TOTAL = (exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null, exp.Paren, exp.And,
         exp.Or, exp.Not, exp.Is, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.In,
         exp.Between, exp.Like, exp.ILike, exp.Lower, exp.Upper, exp.Length, exp.Year,
         exp.Month, exp.Quarter, exp.DayOfWeek, exp.Extract, exp.Var)



class AddMeasurement(Protocol):
    """Adds one measurement (or finds the same one) and returns its column name."""

    def __call__(self, kind: str, value: exp.Expression, sensitivity: float,
                 scale: float = 1.0, bounds: tuple[float, float] | None = None, bins: int = 0,
                 hidden: bool = False, fraction: float | None = None) -> str: ...

def _col(name: str) -> exp.Column:
    return exp.column(name, table=REL)


def _when(cond: exp.Expression | None, value: exp.Expression,
          otherwise: exp.Expression | None = None) -> exp.Expression:
    if cond is None:
        return value
    case = exp.Case().when(cond.copy(), value)
    return case.else_(otherwise) if otherwise is not None else case


def _num(value: float) -> exp.Expression:
    if float(value).is_integer() and abs(value) < 2**53:
        lit: exp.Expression = exp.Literal.number(int(value))
    else:
        lit = exp.Literal.number(repr(float(value)))
    return exp.Neg(this=exp.Literal.number(str(lit.this).lstrip("-"))) if value < 0 else lit


def fn(name: str, *args: exp.Expression) -> exp.Expression:
    """A DuckDB function call emitted as written (sqlglot would add NULL guards)."""
    return exp.Anonymous(this=name, expressions=list(args))


def total(node: exp.Expression) -> exp.Expression:
    """``node``, or ``TRY(node)`` when some row value could make it raise."""
    if all(isinstance(n, TOTAL) for n in node.walk()):
        return node
    return fn("TRY", node)


def clamp(arg: exp.Expression, lo: float, hi: float) -> exp.Expression:
    """Bound a value to [lo, hi]. NULL stays NULL, NaN and inf become a bound.

    A CASE rather than GREATEST/LEAST: those skip NULL arguments in DuckDB (turning a
    NULL into a bound) and run slower."""
    case = exp.Case().when(exp.GT(this=arg.copy(), expression=_num(hi)), _num(hi)) \
        .when(exp.LT(this=arg.copy(), expression=_num(lo)), _num(lo)).else_(arg.copy())
    case.meta["sandbox_clamp"] = (lo, hi)  # see sandbox.sql.shortcuts
    return case


def _scale(lo: float, hi: float, integer: bool) -> float:
    """The fixed-point factor: up to FIXED_POINT_DIGITS decimals, fewer (down to steps of
    a power of ten above 1) so that one row stays within MAX_ROW_FIXED."""
    m = max(abs(lo), abs(hi))
    if m > MAX_BOUND:
        raise Refusal("gate.unbounded_measure", "the bounds of an aggregated expression are too "
                      "large to sum exactly", "aggregate a smaller expression (divide it)")
    if integer and float(lo).is_integer() and float(hi).is_integer() and m <= MAX_ROW_FIXED:
        return 1.0
    digits = FIXED_POINT_DIGITS
    while m * 10.0**digits > MAX_ROW_FIXED:
        digits -= 1
    return 10.0**digits


def _double(value: exp.Expression) -> exp.Expression:
    """Generated arithmetic runs in DOUBLE too (an INTEGER clamp minus a bound can overflow)."""
    return exp.Cast(this=value, to=exp.DataType.build("DOUBLE"))


def _unit_bound(lo: float, hi: float, scale: float) -> float:
    """The largest |fixed-point value| of one row: ROUND is monotone, so a value within
    [lo, hi] rounds to at most ceil(max(|lo|, |hi|) * scale) (e.g. 0.00005 * 10^4 = 0.5
    rounds to 1). At least 1, so that a constant still gets a valid mechanism."""
    return max(float(math.ceil(max(abs(lo), abs(hi)) * scale)), 1.0)


def _fixed(value: exp.Expression, scale: float, integer_typed: bool = False) -> exp.Expression:
    """Fixed point: an exact integer per row, so sums cannot leak through float rounding.

    A clamped integer column is already exact; anything else is scaled and rounded."""
    if integer_typed and scale == 1:
        return value
    scaled = value if scale == 1 else exp.Mul(this=_double(value), expression=_num(scale))
    return exp.Cast(this=exp.Round(this=scaled), to=exp.DataType.build("BIGINT"))


def measurements(tree: exp.Select, ctx: RewriteContext) -> exp.Select:
    a = ctx.analysis
    rows = a.rows_per_unit
    rel = exp.select()
    # Every non-NULL unit of a joined row is the same unit (joins are on the unit). When the
    # first table is a lookup table, an outer join can leave rows with no private row at
    # all: they belong to nobody and are left out.
    first = tree.args["from_"].this.alias_or_name
    units = [exp.column(c, table=t) for t, c in a.unit_columns.items()]
    conditions: list[exp.Expression] = []
    if first in a.unit_columns:
        unit: exp.Expression = exp.column(a.unit_columns[first], table=first)
    else:
        unit = units[0] if len(units) == 1 else exp.Coalesce(this=units[0],
                                                              expressions=units[1:])
        conditions.append(exp.Not(this=exp.Is(this=unit.copy(), expression=exp.Null())))
    rel = rel.select(exp.alias_(unit, "__unit"), copy=False)
    for i, key in enumerate(a.keys):
        value = make_safe(key.expr.copy(), a.sources)
        if key.cast:
            value = exp.Cast(this=value, to=exp.DataType.build(key.cast))
        if kind(key.expr, a.sources.column) == "date":
            # Dates beyond what clients can represent (years 1-9999, 'infinity') are NULL.
            value = exp.Case().when(exp.Between(
                this=value.copy(), low=exp.cast(exp.Literal.string("0001-01-01"), "DATE"),
                high=exp.cast(exp.Literal.string("9999-12-31"), "DATE")), value)
        rel = rel.select(exp.alias_(total(value), f"__k{i}"), copy=False)
    rel.set("from_", tree.args["from_"].copy())
    if tree.args.get("joins"):
        rel.set("joins", [j.copy() for j in tree.args["joins"]])
    if tree.args.get("where") is not None:
        conditions += [total(c.copy()) for c in conjuncts(tree.args["where"].this)]
    if conditions:
        rel = rel.where(*conditions, copy=False)
    ctx.cut = cut_units(rel)

    values: dict[str, Measurement] = {}

    def add(kind: str, value: exp.Expression, sensitivity: float, scale: float = 1.0,
            bounds: tuple[float, float] | None = None, bins: int = 0,
            hidden: bool = False, fraction: float | None = None) -> str:
        key = f"{kind}|{value.sql('duckdb')}|{fraction}|{hidden}"
        if key not in values:
            m = Measurement(f"__m{len(values)}", kind, value, sensitivity, scale, bounds, bins,
                            hidden, fraction)
            values[key] = m
        return values[key].name

    for spec in a.aggs:
        ctx.agg_measurements[id(spec)] = _measure(spec, add, rows, a.sources)
    if a.grouped and not ctx_public(ctx):
        # the query's own COUNT(*) is the threshold's count when it has one: its noisy
        # value decides which keys are kept and is released as is (noised once, not twice)
        star = next((m for m in values.values() if m.kind == "count" and not m.hidden
                     and isinstance(m.value, exp.Literal) and m.sensitivity == rows), None)
        ctx.threshold = star.name if star is not None else \
            add("count", exp.Literal.number(1), rows, hidden=True)

    ctx.measurements = list(values.values())
    outer = exp.select()
    for i in range(len(a.keys)):
        outer = outer.select(exp.alias_(_col(f"__k{i}"), f"__k{i}"), copy=False)
    for m in ctx.measurements:
        rel = rel.select(exp.alias_(total(m.value), f"__v{m.name[3:]}"), copy=False)
        v = _col(f"__v{m.name[3:]}")
        agg: exp.Expression
        if m.kind == "count" and isinstance(m.value, exp.Literal):
            agg = exp.Count(this=exp.Star())
        elif m.kind == "count":
            agg = exp.Count(this=v)
        elif m.kind == "count_units":
            agg = exp.Count(this=exp.Distinct(expressions=[v]))
        elif m.kind == "histogram":
            agg = exp.Anonymous(this="HISTOGRAM", expressions=[v])
        else:
            agg = exp.Sum(this=v)
        outer = outer.select(exp.alias_(agg, m.name), copy=False)
    outer = outer.from_(exp.Subquery(this=rel, alias=exp.TableAlias(
        this=exp.to_identifier(REL))), copy=False)
    if a.keys:
        outer = outer.group_by(*[_col(f"__k{i}") for i in range(len(a.keys))], copy=False)
        if ctx.threshold:  # private keys come back in key order, never in storage order
            outer = outer.order_by(*[exp.Ordered(this=exp.column(f"__k{i}"), nulls_first=True)
                                     for i in range(len(a.keys))], copy=False)
    return outer



def ctx_public(ctx: RewriteContext) -> bool:
    from .public_keys import key_rows

    return key_rows(ctx) is not None


def _measure(spec: AggSpec, add: AddMeasurement, rows: int,
             sources: Sources) -> list[str]:
    """The measurements of one aggregate, over safe copies of its argument and FILTER."""
    cond = None if spec.condition is None else make_safe(spec.condition.copy(), sources)
    if spec.kind == "count":
        # COUNT(v) counts non-NULL values: 1 for COUNT(*), the argument for COUNT(arg).
        value = make_safe(spec.arg.copy(), sources) if spec.arg is not None else \
            exp.Literal.number(1)
        return [add("count", _when(cond, value), rows)]
    if spec.kind == "count_units":
        assert spec.arg is not None
        return [add("count_units", _when(cond, spec.arg.copy()), 1)]
    assert spec.arg is not None and spec.bounds is not None
    lo, hi = spec.bounds
    arg = make_safe(spec.arg.copy(), sources)
    clamped = clamp(arg, lo, hi)
    count_value = _when(cond, arg.copy())
    int_col = spec.integer and isinstance(spec.arg, exp.Column)
    if spec.kind in ("sum", "avg"):
        s = _scale(lo, hi, spec.integer)
        total_sum = add("sum", _when(cond, _fixed(clamped, s, int_col)),
                        rows * _unit_bound(lo, hi, s), s, (lo, hi))
        return [total_sum] if spec.kind == "sum" else [total_sum,
                                                       add("count", count_value, rows)]
    if spec.kind in ("var", "stddev"):
        c = (lo + hi) / 2
        exact_c = spec.integer and float(c).is_integer()
        centered = exp.Sub(this=_double(clamped), expression=_num(c))
        d = max(abs(lo - c), abs(hi - c))
        s1 = _scale(-d, d, exact_c)
        s2 = _scale(0, d * d, exact_c)
        square = exp.Pow(this=exp.Paren(this=centered.copy()), expression=exp.Literal.number(2))
        return [add("count", count_value, rows),
                add("sum", _when(cond, _fixed(centered, s1)), rows * _unit_bound(-d, d, s1),
                    s1, (-d, d)),
                add("sum", _when(cond, _fixed(square, s2)), rows * _unit_bound(0, d * d, s2),
                    s2, (0, d * d))]
    if spec.kind == "quantile":
        if hi <= lo:  # a constant: any grid around it will do
            lo, hi = lo - 0.5, hi + 0.5
            clamped = clamp(arg, lo, hi)
        # The bin of each value on a fine grid (a power of two, so the step is exact);
        # HISTOGRAM counts rows per non-empty bin, at most min(rows, bins) entries per group.
        step = (hi - lo) / QUANTILE_BINS
        raw = exp.Floor(this=exp.Div(this=exp.Paren(this=exp.Sub(this=_double(clamped),
                                                                  expression=_num(lo))),
                                     expression=_num(step)))
        binned = exp.Cast(this=fn("LEAST", raw, _num(QUANTILE_BINS - 1)),
                          to=exp.DataType.build("INTEGER"))
        return [add("histogram", _when(cond, binned), rows, 1.0, (lo, hi), QUANTILE_BINS,
                    fraction=spec.fraction)]
    raise AssertionError(spec.kind)  # pragma: no cover


CUT = "__cut"


def cut_units(rel: exp.Select) -> exp.Select | None:
    """How many units have a row that matches the query but was left out by a row bound
    (``bound_rows``) above 1: the same rows and conditions with one table's bound lifted to
    keep only its rows beyond the bound (the other bounds kept, so a unit's joined rows
    stay linear in its rows), for each bounded table in turn, units counted once.

    Released with noise beside the answer, it tells the analyst how much the bound can
    have lowered counts and sums. One unit moves it by at most 1 (ranks are per unit). A
    bound of 1 on a table of one row per unit cuts nothing and is not reported.
    """
    count_of_scans = len(_cutting_scans(rel))
    if not count_of_scans:
        return None
    parts: list[exp.Select] = []
    for i in range(count_of_scans):
        part = rel.copy()
        scan = _cutting_scans(part)[i]  # the same scan in this copy (copies keep the order)
        _, k, unit = scan.meta["sandbox_rank"]
        scan.set("where", exp.Where(this=exp.GT(this=exp.column(RANK),
                                                expression=exp.Literal.number(k))))
        sub = scan.parent  # the scan's subquery, aliased as the table in the query
        assert isinstance(sub, exp.Subquery)
        if isinstance(sub.parent, exp.Join) and sub.parent.parent is part:
            # under an outer join the lifted table's columns are NULL where it has no row
            part = part.where(exp.Not(this=exp.Is(
                this=exp.column(unit, table=sub.alias), expression=exp.Null())),
                copy=False)
        part.set("expressions", [e for e in part.expressions if e.alias == "__unit"])
        parts.append(part)
    union: exp.Expression = parts[0]
    for part in parts[1:]:
        union = exp.Union(this=union, expression=part, distinct=False)
    count = exp.Count(this=exp.Distinct(expressions=[_col("__unit")]))
    return exp.select(exp.alias_(count, CUT)).from_(
        exp.Subquery(this=union, alias=exp.TableAlias(this=exp.to_identifier(REL))),
        copy=False)


def _cutting_scans(tree: exp.Select) -> list[exp.Select]:
    """The row-bounded scans (``bound_rows``) whose bound can cut rows (above 1)."""
    return [s for s in tree.find_all(exp.Select)
            if s._meta and s.meta.get("sandbox_rank", (None, 1))[1] > 1]
