"""How `sandbox query` shows a release: a table with ± intervals, JSON, or CSV."""

from __future__ import annotations

import json
import math
import sys
from typing import TYPE_CHECKING, Any

import click

from .common import print_table

if TYPE_CHECKING:
    from ..gate import Release


def _key_columns(d: dict[str, Any]) -> set[str]:
    """The release's grouping keys: exact values, released without a mechanism or an
    interval (every noisy or derived column names its mechanism)."""
    mechanisms = d.get("mechanisms") or {}
    return {c for i, c in enumerate(d["columns"])
            if c not in mechanisms and all(ci[i] is None for ci in d["ci95"])}


def _suppressed_text(d: dict[str, Any]) -> str:
    ci = d.get("suppressed_groups_ci95")
    return f"{d['suppressed_groups']:,}" + ("" if ci is None else f" ± {ci:,.0f}")


def print_release(release: Release, fmt: str) -> None:
    """A release as `--format` asks: the service's JSON, CSV, or a table with a footer
    saying what the numbers are (noise, cost, suppressed groups, bounding)."""
    d = release.to_dict()
    if fmt == "json":
        click.echo(json.dumps(d, ensure_ascii=False, default=str))
        return
    if fmt == "csv":
        _write_csv(d)
        return
    keys = _key_columns(d)
    rows = []
    for row, ci in zip(d["rows"], d["ci95"], strict=True):
        rows.append({c: _fmt_key(v) if c in keys else _fmt_cell(v, h)
                     for c, v, h in zip(d["columns"], row, ci, strict=True)})
    print_table(rows, d["columns"], upper=False)
    spent = (f"the stored answer of the same question (epsilon {d['epsilon']:.4g} spent then, "
             "nothing now)" if d.get("replayed") else
             f"epsilon spent {d['epsilon']:.4g}, delta {d['delta']:.2g}")
    if d.get("dummy"):
        spent = (f"epsilon spent 0 (on real data: epsilon {d['epsilon']:.4g}, delta "
                 f"{d['delta']:.2g})")
        click.echo("DUMMY DATA: made-up values with the policy's schema, not real records; "
                   "free and never exportable")
    click.echo(f"noisy values (differential privacy), ± = 95% interval; {spent}; groups "
               f"suppressed {_suppressed_text(d)}; release {d['release_id']}")
    bounding = d.get("bounding") or {}
    if bounding.get("units_cut") is not None:
        kept = ", ".join(f"{k} rows of {t}" for t, k in bounding["rows_per_unit"].items())
        click.echo(f"bounding: each unit keeps at most {kept}; about "
                   f"{max(bounding['units_cut'], 0):,} (± {bounding['units_cut_ci95']:,.0f}) "
                   "units had matching rows left out, so counts and sums can be low")


CSV_META = ("release_id", "epsilon", "delta", "suppressed_groups", "suppressed_groups_ci95")


def _write_csv(d: dict[str, Any]) -> None:
    """One row per group: the values, a ``<column>_ci95`` per column, then what the
    release is on every row (so a spreadsheet or ``pandas.read_csv`` keeps it with the
    numbers, and a filtered or pasted part still says where it came from). A meta name
    taken by a result column gets the prefix ``sandbox_``. The same facts go to standard
    error, for the zero-row answer whose CSV is only its header."""
    import csv

    names = d["columns"] + [f"{c}_ci95" for c in d["columns"]]
    meta = []
    for m in CSV_META:
        while m in names:
            m = f"sandbox_{m}"
        meta.append(m)
    meta_values = [d[m] for m in CSV_META]
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(names + meta)
    for row, ci in zip(d["rows"], d["ci95"], strict=True):
        w.writerow(row + ci + meta_values)
    click.echo(f"release {d['release_id']}: epsilon {d['epsilon']:.4g}, delta "
               f"{d['delta']:.2g}, groups suppressed {_suppressed_text(d)}"
               + (" (DUMMY DATA)" if d.get("dummy") else ""), err=True)


def _fmt_key(value: Any) -> str:
    """A grouping key as written: no thousands separators (years, months, codes) and every
    digit of a non-integral number (a key is exact, not an estimate)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "NULL" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.15g}"


def _fmt_number(value: Any, digits: int) -> str:
    """A noisy number for reading: thousands separators, a few significant digits."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _fmt_cell(value: Any, half: float | None) -> str:
    text = _fmt_number(value, 4)
    return f"{text} ± {_fmt_number(half, 3)}" if half is not None else text

