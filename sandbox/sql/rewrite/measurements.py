"""Pass: replace the user's aggregates by exact, bounded per-group measurements.

The inner relation ``__rel`` holds, per row, the privacy unit, the grouping keys
and one clamped value per measurement; the outer query sums them per group.
Sums are exact integers (fixed point), so float rounding cannot leak; every
value is clamped to its bounds, so one unit moves any sum by at most its bound.
"""

from __future__ import annotations

from sqlglot import exp

from ..analyse import AggSpec
from ..refusal import Refusal
from .context import FIXED_POINT_DIGITS, QUANTILE_BINS, Measurement, RewriteContext

REL = "__rel"
MAX_FIXED_POINT = 1e15


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


def clamp(arg: exp.Expression, lo: float, hi: float) -> exp.Expression:
    """Bound a value to [lo, hi]. NULL stays NULL, NaN and inf become a bound.

    A CASE rather than GREATEST/LEAST: those skip NULL arguments in DuckDB (turning a
    NULL into a bound) and run slower."""
    case = exp.Case().when(exp.GT(this=arg.copy(), expression=_num(hi)), _num(hi)) \
        .when(exp.LT(this=arg.copy(), expression=_num(lo)), _num(lo)).else_(arg.copy())
    case.meta["sandbox_clamp"] = (lo, hi)  # see sandbox.sql.shortcuts
    return case


def _scale(lo: float, hi: float, integer: bool) -> float:
    m = max(abs(lo), abs(hi))
    if m > MAX_FIXED_POINT:
        raise Refusal("gate.unbounded_measure", "the bounds of an aggregated expression are too "
                      "large to sum exactly", "aggregate a smaller expression (divide it)")
    if integer and float(lo).is_integer() and float(hi).is_integer():
        return 1.0
    digits = FIXED_POINT_DIGITS
    while digits > 0 and m * 10**digits > MAX_FIXED_POINT:
        digits -= 1
    return float(10**digits)


def _fixed(value: exp.Expression, scale: float, integer_typed: bool = False) -> exp.Expression:
    """Fixed point: an exact integer per row, so sums cannot leak through float rounding.

    A clamped integer column is already exact; anything else is scaled and rounded."""
    if integer_typed and scale == 1:
        return value
    scaled = value if scale == 1 else exp.Mul(this=value, expression=_num(scale))
    return exp.Cast(this=exp.Round(this=scaled), to=exp.DataType.build("BIGINT"))


def measurements(tree: exp.Select, ctx: RewriteContext) -> exp.Select:
    a = ctx.analysis
    rows = a.rows_per_unit
    rel = exp.select()
    alias, unit_col = next(iter(a.unit_columns.items()))
    rel = rel.select(exp.alias_(exp.column(unit_col, table=alias), "__unit"), copy=False)
    for i, key in enumerate(a.keys):
        rel = rel.select(exp.alias_(key.expr.copy(), f"__k{i}"), copy=False)
    rel.set("from_", tree.args["from_"].copy())
    if tree.args.get("joins"):
        rel.set("joins", [j.copy() for j in tree.args["joins"]])
    if tree.args.get("where") is not None:
        rel.set("where", tree.args["where"].copy())

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
        ctx.agg_measurements[id(spec)] = _measure(spec, add, rows)
    if a.grouped and not ctx_public(ctx):
        ctx.threshold = add("count", exp.Literal.number(1), rows, hidden=True)

    ctx.measurements = list(values.values())
    outer = exp.select()
    for i in range(len(a.keys)):
        outer = outer.select(exp.alias_(_col(f"__k{i}"), f"__k{i}"), copy=False)
    for m in ctx.measurements:
        rel = rel.select(exp.alias_(m.value, f"__v{m.name[3:]}"), copy=False)
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
    return outer


def ctx_public(ctx: RewriteContext) -> bool:
    from .public_keys import key_rows

    return key_rows(ctx) is not None


def _measure(spec: AggSpec, add, rows: int) -> list[str]:  # type: ignore[no-untyped-def]
    cond = spec.condition
    if spec.kind == "count":
        # COUNT(v) counts non-NULL values: 1 for COUNT(*), the argument for COUNT(arg).
        value = spec.arg.copy() if spec.arg is not None else exp.Literal.number(1)
        return [add("count", _when(cond, value), rows)]
    if spec.kind == "count_units":
        return [add("count_units", _when(cond, spec.arg.copy()), 1)]
    assert spec.arg is not None and spec.bounds is not None
    lo, hi = spec.bounds
    clamped = clamp(spec.arg, lo, hi)
    count_value = _when(cond, spec.arg.copy())
    int_col = spec.integer and isinstance(spec.arg, exp.Column)
    if spec.kind == "sum":
        s = _scale(lo, hi, spec.integer)
        return [add("sum", _when(cond, _fixed(clamped, s, int_col)),
                    rows * max(abs(lo), abs(hi)) * s, s, (lo, hi))]
    if spec.kind == "avg":
        s = _scale(lo, hi, spec.integer)
        return [add("sum", _when(cond, _fixed(clamped, s, int_col)),
                    rows * max(abs(lo), abs(hi)) * s, s, (lo, hi)),
                add("count", count_value, rows)]
    if spec.kind in ("var", "stddev"):
        c = (lo + hi) / 2
        if spec.integer and float(c).is_integer():
            c = float(int(c))
        centered = exp.Sub(this=clamped, expression=_num(c))
        d = max(abs(lo - c), abs(hi - c))
        s1 = _scale(-d, d, spec.integer and float(c).is_integer())
        s2 = _scale(0, d * d, spec.integer and float(c).is_integer())
        square = exp.Pow(this=exp.Paren(this=centered.copy()), expression=exp.Literal.number(2))
        return [add("count", count_value, rows),
                add("sum", _when(cond, _fixed(centered, s1)), rows * d * s1, s1, (-d, d)),
                add("sum", _when(cond, _fixed(square, s2)), rows * d * d * s2, s2, (0, d * d))]
    if spec.kind == "quantile":
        step = (hi - lo) / QUANTILE_BINS
        raw = exp.Floor(this=exp.Div(this=exp.Paren(this=exp.Sub(this=clamped,
                                                                  expression=_num(lo))),
                                     expression=_num(step)))
        binned = exp.Cast(this=fn("LEAST", raw, _num(QUANTILE_BINS - 1)),
                          to=exp.DataType.build("INTEGER"))
        return [add("histogram", _when(cond, binned), rows, 1.0, (lo, hi), QUANTILE_BINS,
                    fraction=spec.fraction)]
    raise AssertionError(spec.kind)  # pragma: no cover


def candidates(m: Measurement) -> list[float]:
    """Candidate values for a quantile: the histogram's bin edges."""
    assert m.bounds is not None
    lo, hi = m.bounds
    step = (hi - lo) / m.bins
    return [lo + i * step for i in range(m.bins + 1)]


