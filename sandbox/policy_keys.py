"""Public group keys of a policy column: a list of values, or a range ``{from, to, step}``.

Keys are published knowledge (docs/policy.md): every value listed here is a group a
grouped answer holds, zeros included, without a threshold.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Protocol


class _Problems(Protocol):
    def add(self, line: int, msg: str) -> None: ...


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (booleans, text and NaN/inf are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


DATE_STEPS = ("day", "week", "month", "quarter", "year")
MAX_RANGE_KEYS = 10_000
RANGE_KEYS = {"from", "to", "step"}


def key_range(doc: dict[str, Any], ctype: str, where: str, line: int,
               p: _Problems) -> tuple[Any, ...] | None:
    """``{from, to, step}``: every date from ``from`` to ``to`` by ``step`` (day, week,
    month, quarter, year), or every integer by a whole ``step`` (default 1)."""
    unknown = set(doc) - RANGE_KEYS
    lo, hi, step = doc.get("from"), doc.get("to"), doc.get("step", 1)
    if unknown or lo is None or hi is None:
        p.add(line, f"{where}: a key range is {{from: <first>, to: <last>, step: <step>}}"
              + (f"; unknown: {', '.join(sorted(map(str, unknown)))}" if unknown else ""))
        return None
    if ctype == "date":
        if not (key_fits(lo, "date") and key_fits(hi, "date")) or step not in DATE_STEPS:
            p.add(line, f"{where}: a date key range needs YYYY-MM-DD dates in from and to "
                  f"and a step of {', '.join(DATE_STEPS)}")
            return None
        if step in ("month", "quarter", "year") and lo.day > 28:
            p.add(line, f"{where}: a {step} key range must start on day 1 to 28 of a month "
                  "(e.g. 2015-01-01)")
            return None
        values: list[Any] = []
        d = lo
        while d <= hi and len(values) <= MAX_RANGE_KEYS:
            values.append(d)
            try:
                d = _next_date(d, step)
            except (OverflowError, ValueError):  # past 9999-12-31: the range ends here
                break
    elif ctype in ("int16", "int32", "int64"):
        if not (key_fits(lo, ctype) and key_fits(hi, ctype) and key_fits(step, ctype)) or \
                step < 1:
            p.add(line, f"{where}: an integer key range needs whole numbers in from and to and "
                  "a whole step of at least 1")
            return None
        values = list(range(lo, hi + 1, step)[:MAX_RANGE_KEYS + 1])
    else:
        p.add(line, f"{where}: key ranges are for date and integer columns; list the keys")
        return None
    if not values or len(values) > MAX_RANGE_KEYS:
        p.add(line, f"{where}: the key range must hold 1 to {MAX_RANGE_KEYS:,} values "
              f"(from must not be after to; use a coarser step)")
        return None
    return tuple(values)


def _next_date(d: dt.date, step: str) -> dt.date:
    if step == "day":
        return d + dt.timedelta(days=1)
    if step == "week":
        return d + dt.timedelta(days=7)
    m = d.month - 1 + {"month": 1, "quarter": 3, "year": 12}[step]
    return d.replace(year=d.year + m // 12, month=m % 12 + 1)  # from's day is at most 28


def key_fits(value: Any, ctype: str) -> bool:
    if ctype == "string":
        return isinstance(value, str)
    if ctype in ("int16", "int32", "int64"):
        return isinstance(value, int) and not isinstance(value, bool)
    if ctype == "float64":
        return number(value) is not None
    if ctype == "bool":
        return isinstance(value, bool)
    if ctype == "date":
        return isinstance(value, dt.date) and not isinstance(value, dt.datetime)
    return False


def key_value(value: Any, ctype: str) -> Any:
    return float(value) if ctype == "float64" else value


