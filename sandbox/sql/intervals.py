"""Static facts about row-level expressions: numeric bounds and key domains.

Bounds let SUM/AVG/VAR/quantiles work on derived expressions (income / 12,
CASE bins, amount * rate): the rewrite clamps to the inferred bounds, so a wrong
inference can only cost accuracy, never privacy. A key domain that is known
statically (declared public keys, CASE with literal results, predicates) lets
every group appear, zeros included, without thresholding.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

from sqlglot import exp

from ..policy import ColumnPolicy

Bounds = tuple[float, float]
ColumnLookup = Callable[[exp.Column], ColumnPolicy]
PREDICATES = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Is, exp.In, exp.Between,
              exp.Like, exp.ILike, exp.And, exp.Or, exp.Not)


def _literal_number(node: exp.Expression) -> float | None:
    if isinstance(node, exp.Paren):
        return _literal_number(node.this)
    if isinstance(node, exp.Neg):
        v = _literal_number(node.this)
        return None if v is None else -v
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            v = float(node.this)
        except ValueError:
            return None
        return v if math.isfinite(v) else None
    return None


def _hull(parts: list[Bounds | None]) -> Bounds | None:
    if not parts or any(p is None for p in parts):
        return None
    return (min(p[0] for p in parts if p), max(p[1] for p in parts if p))


def bounds(node: exp.Expression, lookup: ColumnLookup) -> Bounds | None:
    """Numeric bounds of ``node`` over every row, or None if they cannot be known."""
    result = _bounds(node, lookup)
    if result is None or not all(math.isfinite(x) for x in result):
        return None
    return result


def _bounds(node: exp.Expression, lookup: ColumnLookup) -> Bounds | None:
    v = _literal_number(node)
    if v is not None:
        return (v, v)
    if isinstance(node, exp.Column):
        col = lookup(node)
        if col.bounds:
            return col.bounds
        if col.keys and col.numeric:
            return (float(min(col.keys)), float(max(col.keys)))
        return None
    if isinstance(node, exp.Paren | exp.TryCast):
        return _bounds(node.this, lookup)
    if isinstance(node, exp.Neg):
        b = _bounds(node.this, lookup)
        return None if b is None else (-b[1], -b[0])
    if isinstance(node, exp.Add | exp.Sub | exp.Mul):
        a, b = _bounds(node.this, lookup), _bounds(node.expression, lookup)
        if a is None or b is None:
            return None
        if isinstance(node, exp.Add):
            return (a[0] + b[0], a[1] + b[1])
        if isinstance(node, exp.Sub):
            return (a[0] - b[1], a[1] - b[0])
        products = [x * y for x in a for y in b]
        return (min(products), max(products))
    if isinstance(node, exp.Div):
        a = _bounds(node.this, lookup)
        d = _literal_number(node.expression)
        if a is None or not d:
            return None
        ends = (a[0] / d, a[1] / d)
        return (min(ends), max(ends))
    if isinstance(node, exp.Case):
        parts = [_bounds(i.args["true"], lookup) for i in node.args.get("ifs", [])]
        return _hull(parts + _value_bounds([node.args.get("default")], lookup))
    if isinstance(node, exp.If):
        return _hull(_value_bounds([node.args["true"], node.args.get("false")], lookup))
    if isinstance(node, exp.Coalesce):
        return _hull([_bounds(e, lookup) for e in [node.this, *node.expressions]])
    if isinstance(node, exp.Least | exp.Greatest):
        lo, hi = _half(node, lookup)
        return None if lo is None or hi is None else (lo, hi)
    if isinstance(node, exp.Floor | exp.Ceil | exp.Round):
        b = _bounds(node.this, lookup)
        return None if b is None else (math.floor(b[0]), math.ceil(b[1]))
    if isinstance(node, exp.Abs):
        b = _bounds(node.this, lookup)
        if b is None:
            return None
        lo = 0.0 if b[0] <= 0 <= b[1] else min(abs(b[0]), abs(b[1]))
        return (lo, max(abs(b[0]), abs(b[1])))
    if isinstance(node, exp.Year):
        return (1900.0, 2200.0)
    if isinstance(node, exp.Month):
        return (1.0, 12.0)
    if isinstance(node, exp.Quarter):
        return (1.0, 4.0)
    if isinstance(node, exp.DayOfWeek):
        return (0.0, 7.0)
    return None


def _half(node: exp.Expression, lookup: ColumnLookup) -> tuple[float | None, float | None]:
    """Bounds where one side may be unknown: LEAST(x, c) <= c and GREATEST(x, c) >= c
    even when x is unbounded, so LEAST(GREATEST(x, lo), hi) is bounded."""
    if isinstance(node, exp.Paren):
        return _half(node.this, lookup)
    if isinstance(node, exp.Least | exp.Greatest):
        parts = [_half(e, lookup) for e in [node.this, *node.expressions]]
        los, his = [p[0] for p in parts], [p[1] for p in parts]
        if isinstance(node, exp.Least):
            known_hi = [h for h in his if h is not None]
            return (_least(los), min(known_hi) if known_hi else None)
        known_lo = [lo for lo in los if lo is not None]
        return (max(known_lo) if known_lo else None, _greatest(his))
    b = _bounds(node, lookup)
    return (None, None) if b is None else b


def _value_bounds(nodes: list[exp.Expression | None], lookup: ColumnLookup) -> list[Bounds | None]:
    """Bounds of the branches that give a value: a missing or NULL branch adds none."""
    return [_bounds(n, lookup) for n in nodes if n is not None and not isinstance(n, exp.Null)]


def _least(values: list[float | None]) -> float | None:
    return None if None in values else min(v for v in values if v is not None)


def _greatest(values: list[float | None]) -> float | None:
    return None if None in values else max(v for v in values if v is not None)


def integral(node: exp.Expression, lookup: ColumnLookup) -> bool:
    """True when every value of ``node`` is an integer (exact integer sums possible)."""
    if isinstance(node, exp.Literal):
        return not node.is_string and "." not in node.this and "e" not in node.this.lower()
    if isinstance(node, exp.Null):
        return True
    if isinstance(node, exp.Column):
        return lookup(node).type in ("int16", "int32", "int64")
    if isinstance(node, exp.Paren | exp.Neg | exp.Floor | exp.Ceil | exp.Abs):
        return isinstance(node, exp.Floor | exp.Ceil) or integral(node.this, lookup)
    if isinstance(node, exp.Round):
        return node.args.get("decimals") is None or integral(node.this, lookup)
    if isinstance(node, exp.Add | exp.Sub | exp.Mul):
        return integral(node.this, lookup) and integral(node.expression, lookup)
    if isinstance(node, exp.Case):
        parts = [i.args["true"] for i in node.args.get("ifs", [])]
        if node.args.get("default") is not None:
            parts.append(node.args["default"])
        return all(integral(p, lookup) for p in parts)
    if isinstance(node, exp.If):
        return all(integral(node.args[k], lookup) for k in ("true", "false")
                   if node.args.get(k) is not None)
    if isinstance(node, exp.Coalesce | exp.Least | exp.Greatest):
        return all(integral(e, lookup) for e in [node.this, *node.expressions])
    return bool(isinstance(node, exp.Year | exp.Month | exp.Quarter | exp.DayOfWeek))


KIND_OF_TYPE = {"string": "text", "int16": "number", "int32": "number", "int64": "number",
                "float64": "number", "bool": "boolean", "date": "date", "timestamp": "date"}
NUMBER_FUNCTIONS = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.Neg, exp.Abs, exp.Floor,
                    exp.Ceil, exp.Round, exp.Year, exp.Month, exp.Quarter, exp.DayOfWeek,
                    exp.Extract, exp.Length)
CAST_KINDS = {"VARCHAR": "text", "TEXT": "text", "CHAR": "text", "BOOLEAN": "boolean",
              "DATE": "date", "TIMESTAMP": "date"}


def kind(node: exp.Expression, lookup: ColumnLookup) -> str | None:
    """text | number | date | boolean, or None when unknown (NULL, mixed)."""
    if isinstance(node, exp.Paren):
        return kind(node.this, lookup)
    if isinstance(node, exp.Column):
        return KIND_OF_TYPE.get(lookup(node).type)
    if isinstance(node, exp.Literal):
        return "text" if node.is_string else "number"
    if isinstance(node, (exp.Boolean, *PREDICATES)):
        return "boolean"
    if isinstance(node, exp.Cast):  # TryCast too
        name = getattr(node.to.this, "name", "")
        return CAST_KINDS.get(name, "number" if node.to.is_type(*exp.DataType.NUMERIC_TYPES)
                              else None)
    if isinstance(node, exp.Add | exp.Sub):
        a, b = kind(node.this, lookup), kind(node.expression, lookup)
        if "date" in (a, b):
            return "number" if a == b == "date" else "date"
        return "number"
    if isinstance(node, NUMBER_FUNCTIONS):
        return "number"
    if isinstance(node, exp.Lower | exp.Upper):
        return "text"
    if isinstance(node, exp.TimestampTrunc | exp.DateTrunc):
        return "date"
    if isinstance(node, exp.Case | exp.If | exp.Coalesce | exp.Least | exp.Greatest |
                  exp.Nullif):
        kinds = {kind(b, lookup) for b in _branches(node) if not isinstance(b, exp.Null)}
        return kinds.pop() if len(kinds) == 1 else None
    return None


def _branches(node: exp.Expression) -> list[exp.Expression]:
    """The expressions whose value a conditional expression can take."""
    if isinstance(node, exp.Case):
        out = [i.args["true"] for i in node.args.get("ifs", [])]
        return out + ([node.args["default"]] if node.args.get("default") is not None else [])
    if isinstance(node, exp.If):
        return [node.args[k] for k in ("true", "false") if node.args.get(k) is not None]
    if isinstance(node, exp.Nullif):
        return [node.this]
    return [node.this, *node.expressions]


def mixed_kinds(node: exp.Expression, lookup: ColumnLookup) -> exp.Expr | None:
    """The first sub-expression that mixes text, numbers and dates (a comparison, IN list or
    conditional whose parts differ): the engine would convert one of them at run time, and a
    conversion that fails on some rows is a signal about those rows."""
    for n in node.walk():
        parts: list[exp.Expression] = []
        if isinstance(n, exp.EQ | exp.NEQ | exp.GT | exp.GTE | exp.LT | exp.LTE):
            parts = [n.this, n.expression]
        elif isinstance(n, exp.In):
            parts = [n.this, *n.expressions]
        elif isinstance(n, exp.Between):
            parts = [n.this, n.args["low"], n.args["high"]]
        elif isinstance(n, exp.Case | exp.If | exp.Coalesce | exp.Least | exp.Greatest |
                        exp.Nullif):
            parts = _branches(n) + ([n.expression] if isinstance(n, exp.Nullif) else [])
            if isinstance(n, exp.Case) and n.this is not None:  # CASE x WHEN v THEN ...
                tested = [n.this, *(i.this for i in n.args.get("ifs", []))]
                if len({kind(p, lookup) for p in tested} - {None}) > 1:
                    return n
        elif isinstance(n, exp.Add | exp.Sub | exp.Mul | exp.Div | exp.Mod | exp.Neg |
                        exp.Abs):
            # Arithmetic on text or truth values would convert them at run time.
            operands = [n.this] + ([n.expression] if n.args.get("expression") else [])
            if any(kind(o, lookup) in ("text", "boolean") for o in operands):
                return n
            continue
        kinds = {kind(p, lookup) for p in parts if not isinstance(p, exp.Null)}
        kinds.discard(None)
        # A date compared with a text literal is the usual date constant ('2024-01-01'):
        # the literal is converted once, before any row is read.
        if kinds == {"date", "text"} and all(kind(p, lookup) != "text" or
                                             isinstance(p, exp.Literal) for p in parts):
            continue
        if len(kinds) > 1:
            return n
    return None


KEY_TYPES = {"text": "VARCHAR", "integer": "BIGINT", "number": "DOUBLE"}


def key_domain(node: exp.Expression, lookup: ColumnLookup
               ) -> tuple[list[Any] | None, str | None]:
    """The finite set of values a grouping expression can take, when known statically, and
    the engine type the key is cast to so that the declared values and the engine's agree.

    Values are canonical and distinct: 1, 1.0 and 1e0 are one number, '1' and '01' are two
    texts, and a CASE mixing texts and numbers has no domain (the engine would convert).
    """
    if isinstance(node, exp.Paren):
        return key_domain(node.this, lookup)
    if isinstance(node, exp.Column):
        col = lookup(node)
        return (list(dict.fromkeys(col.keys)) if col.keys else None), None
    if isinstance(node, PREDICATES):
        return [False, True], None
    binned = _bin_domain(node, lookup) or _date_part_domain(node, lookup)
    if binned is not None:
        return binned
    if not isinstance(node, exp.Case | exp.If):
        return None, None
    results = [r for r in _branches(node) if not isinstance(r, exp.Null)]
    if not results or not all(isinstance(r, exp.Literal) for r in results):
        return None, None
    if all(r.is_string for r in results):
        return list(dict.fromkeys(r.this for r in results)), KEY_TYPES["text"]
    if any(r.is_string for r in results):
        return None, None
    numbers = [v for v in (_literal_number(r) for r in results) if v is not None]
    if len(numbers) < len(results):
        return None, None
    if all(float(v).is_integer() and abs(v) < 2**53 for v in numbers):
        return list(dict.fromkeys(int(v) for v in numbers)), KEY_TYPES["integer"]
    return list(dict.fromkeys(float(v) for v in numbers)), KEY_TYPES["number"]


# Bins of a bounded expression with more values than this are private keys (thresholded).
MAX_BINS = 1000


def _bin_domain(node: exp.Expression, lookup: ColumnLookup
                ) -> tuple[list[Any], str] | None:
    """Bins of a bounded measure, ``FLOOR(x / width) [* width]``: every bin the declared
    bounds allow is a public key, as OpenDP's ``find_bin`` on edges from public bounds.

    Rows outside the declared bounds fall in no declared bin and are not counted; the
    domain comes from the policy alone, never from the data.
    """
    scale = 1.0
    if isinstance(node, exp.Mul):
        for floor, factor in ((node.this, node.expression), (node.expression, node.this)):
            f = _literal_number(factor)
            if isinstance(floor.unnest(), exp.Floor) and f is not None:
                node, scale = floor.unnest(), f
                break
        else:
            return None
    if not isinstance(node, exp.Floor) or node.args.get("decimals") is not None:
        return None
    inner, width = node.this.unnest(), 1.0
    if isinstance(inner, exp.Div):
        w = _literal_number(inner.expression)
        if not w:
            return None
        inner, width = inner.this, w
    b = bounds(inner, lookup)
    if b is None:
        return None
    ends_f = (b[0] / width, b[1] / width)
    if not all(math.isfinite(e) for e in ends_f):  # a width too small for the bounds
        return None
    ends = sorted((math.floor(ends_f[0]), math.floor(ends_f[1])))
    if ends[1] - ends[0] + 1 > MAX_BINS:
        return None
    values = [i * scale for i in range(ends[0], ends[1] + 1)]
    if all(v.is_integer() and abs(v) < 2**53 for v in values):
        return list(dict.fromkeys(int(v) for v in values)), KEY_TYPES["integer"]
    return list(dict.fromkeys(values)), KEY_TYPES["number"]


# Date parts whose values are fixed by the calendar, whatever the data: public keys always.
CALENDAR_PARTS = {"MONTH": range(1, 13), "QUARTER": range(1, 5), "DOW": range(0, 7),
                  "DAYOFWEEK": range(0, 7), "ISODOW": range(1, 8), "DAY": range(1, 32),
                  "DOY": range(1, 367), "DAYOFYEAR": range(1, 367), "HOUR": range(0, 24)}
PART_OF_NODE: dict[type[exp.Expression], str] = {
    exp.Month: "MONTH", exp.Quarter: "QUARTER", exp.DayOfWeek: "DAYOFWEEK"}


def _date_part_domain(node: exp.Expression, lookup: ColumnLookup
                      ) -> tuple[list[Any], str] | None:
    """Date parts and truncations as public keys: a calendar part (month, quarter, day of
    week, ...) always; the year or a truncation (``date_trunc('month', d)``) when the date
    column has declared keys (a list or a ``{from, to, step}`` range), by applying it to
    every declared date. Dates outside the declared keys fall in no declared group."""
    part, arg = None, None
    if type(node) in PART_OF_NODE:
        part, arg = PART_OF_NODE[type(node)], node.this
    elif isinstance(node, exp.Year):
        part, arg = "YEAR", node.this
    elif isinstance(node, exp.Extract) and isinstance(node.this, exp.Var | exp.Literal):
        part, arg = node.this.name.upper(), node.expression
    elif isinstance(node, exp.TimestampTrunc | exp.DateTrunc):
        unit = node.args.get("unit")
        if isinstance(unit, exp.Var | exp.Literal):
            part, arg = "TRUNC_" + unit.name.upper(), node.this
    if part is None or arg is None:
        return None
    if part in CALENDAR_PARTS:
        return list(CALENDAR_PARTS[part]), KEY_TYPES["integer"]
    arg = arg.unnest()
    keys = lookup(arg).keys if isinstance(arg, exp.Column) and lookup(arg).type == "date" \
        else None
    if not keys:
        return None
    if part == "YEAR":
        return sorted({d.year for d in keys}), KEY_TYPES["integer"]
    trunc = _TRUNCATE.get(part)
    if trunc is None:
        return None
    return sorted({trunc(d) for d in keys}), "TIMESTAMP"


def _week_start(d: dt.date) -> dt.datetime:
    monday = d - dt.timedelta(days=d.weekday())  # ISO weeks, as the engine's date_trunc
    return dt.datetime(monday.year, monday.month, monday.day)


_TRUNCATE: dict[str, Callable[[dt.date], dt.datetime]] = {
    "TRUNC_YEAR": lambda d: dt.datetime(d.year, 1, 1),
    "TRUNC_QUARTER": lambda d: dt.datetime(d.year, 3 * ((d.month - 1) // 3) + 1, 1),
    "TRUNC_MONTH": lambda d: dt.datetime(d.year, d.month, 1),
    "TRUNC_WEEK": _week_start,
    "TRUNC_DAY": lambda d: dt.datetime(d.year, d.month, d.day),
    "TRUNC_HOUR": lambda d: dt.datetime(d.year, d.month, d.day),
}
