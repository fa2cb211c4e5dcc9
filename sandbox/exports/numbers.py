"""The rules that match an export's numbers and text to the workspace's releases:
``provenance`` (every value comes from a release, or a declared post-processing of one)
and ``small_cells`` (no values of groups whose noisy count is below the threshold).

Places are written by row and column number; values and column names appear only in
reviewers' details, and never for an item the identifier scan matched (``Scan.tainted``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .items import scales
from .results import EXAMPLES, PASS, REVIEW, ReleaseRecord, RuleResult

if TYPE_CHECKING:
    from .checks import Scan

MAX_RATIO_CELLS = 200_000  # released values considered for declared ratios


# -- provenance ----------------------------------------------------------------------------
def decimals(x: float | int) -> int:
    """Digits after the point as written (shortest repr), for a rounding tolerance."""
    if isinstance(x, int) or float(x).is_integer():  # 52544.0: rounded, kept as a float
        return 0
    r = repr(float(x))
    mant, _, exp = r.partition("e")
    frac = len(mant.split(".")[1]) if "." in mant else 0
    return max(frac - int(exp or 0), 0)


def _trailing_zeros(x: float | int) -> int:
    if not float(x).is_integer() or x == 0:
        return 0
    n, z = abs(int(x)), 0
    while n % 10 == 0:
        n, z = n // 10, z + 1
    return z


class NumberSet:
    """Released numbers, matched within float rounding and the exported value's precision."""

    def __init__(self, values: Iterable[float]) -> None:
        self.values = sorted({float(v) for v in values if math.isfinite(float(v))})

    def __len__(self) -> int:
        return len(self.values)

    def matches(self, x: float | int, rounded: bool = False) -> bool:
        tol = max(abs(float(x)) * 1e-9, 1e-12, 0.5 * 10.0 ** -decimals(x))
        if rounded:  # declared rounding to tens, hundreds, ...
            tol = max(tol, 0.5 * 10.0 ** _trailing_zeros(x))
        i = bisect.bisect_left(self.values, float(x) - tol)
        return i < len(self.values) and self.values[i] <= float(x) + tol


def numeric(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _release_numbers(rel: ReleaseRecord) -> list[float]:
    return [float(v) for r in (*rel.rows, *rel.ci95) for v in r if numeric(v)]


def _derived(rels: list[ReleaseRecord], steps: Sequence[str]) -> NumberSet:
    base = [v for rel in rels for v in _release_numbers(rel)]
    extra: list[float] = []
    for rel in rels:
        cols = list(zip(*rel.rows, strict=False)) if rel.rows else []
        sums = [sum(float(v) for v in col if numeric(v)) for col in cols]
        if "sum" in steps:
            extra += sums
        if "ratio" in steps and len(rel.rows) * max(len(rel.columns), 1) ** 2 <= \
                MAX_RATIO_CELLS:
            for r in rel.rows:
                nums = [float(v) for v in r if numeric(v)]
                extra += [a / b for a in nums for b in nums if b != 0]
                extra += [float(v) / s for v, s in zip(r, sums, strict=False)
                          if numeric(v) and s != 0]
    values = base + extra
    for k in scales(steps):
        values += [v * k for v in base + extra]
    return NumberSet(values)


def text_key(v: Any) -> str:
    return str(v).strip().casefold()


def provenance(scan: Scan) -> RuleResult:
    """Every number comes from a release of this workspace (or a declared post-processing
    of one), every text cell is a group key or column name of one."""
    items, contents, releases, ctx = scan.items, scan.readable, scan.releases, scan.ctx
    tainted = scan.tainted
    by_name = {it.filename: it for it in items}
    unknown = sorted(r for r, rel in releases.items() if rel is None)
    everything: list[ReleaseRecord] | None = None
    per_item: dict[str, dict[str, Any]] = {}
    for c in contents:
        it = by_name[c.item]
        if c.image:
            continue  # images are always reviewed by a person (human_review)
        if it.release_ids:
            rels = [rel for r in it.release_ids if (rel := releases.get(r)) is not None]
        else:
            if everything is None:
                everything = list(ctx.releases())
            rels = everything
        numbers = _derived(rels, it.postprocessing)
        keys = {text_key(v) for rel in rels for r in rel.rows for v in r
                if v is not None and not numeric(v)}
        keys |= {text_key(col) for rel in rels for col in rel.columns}
        rounded = "round" in it.postprocessing
        unmatched: list[dict[str, Any]] = []
        texts: list[str] = []
        total = 0
        for t in c.tables:
            for i, row in enumerate(t.rows):
                for j, v in enumerate(row):
                    # by number: the same whether or not the item holds an identifier
                    where = f"row {i + 1} column #{j + 1}"
                    if numeric(v):
                        total += 1
                        if not numbers.matches(v, rounded):
                            col = t.columns[j] if j < len(t.columns) else None
                            unmatched.append({"where": where} if c.item in tainted else
                                             {"where": where, "column": col, "value": v})
                    elif v is not None and text_key(v) not in keys and \
                            not isinstance(v, bool):
                        texts.append(where)
        for v in c.numbers:
            total += 1
            if not numbers.matches(v, rounded):
                unmatched.append({"where": "text"} if c.item in tainted else
                                 {"where": "text", "value": v})
        texts += ["text"] * sum(1 for v in c.texts if text_key(v) not in keys)
        if unmatched or texts:
            per_item[c.item] = {
                "numbers": total, "unmatched": len(unmatched),
                "examples": unmatched[:EXAMPLES], "unexplained_text": len(texts),
                "text_examples": texts[:EXAMPLES],
                "release_ids": list(it.release_ids) or "all releases of the workspace"}
    details = {"unknown_release_ids": unknown, "items": per_item}
    if per_item or unknown:
        n = sum(v["unmatched"] for v in per_item.values())
        m = sum(v["unexplained_text"] for v in per_item.values())
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} release id(s) are not releases of this workspace")
        if n:
            parts.append(f"{n} number(s) match no release of this workspace (nor a declared "
                         "post-processing of one)")
        if m:
            parts.append(f"{m} text value(s) are not group keys of a release")
        return RuleResult("provenance", REVIEW, "; ".join(parts) + ": a reviewer will check "
                          "where they come from", details)
    return RuleResult("provenance", PASS, "every value comes from a release of this "
                      "workspace", details)


# -- small cells ---------------------------------------------------------------------------
def small_cells(scan: Scan) -> RuleResult:
    """No values of groups whose released noisy count is below the policy's threshold."""
    items, contents, releases, ctx = scan.items, scan.readable, scan.releases, scan.ctx
    threshold = ctx.min_group_count
    by_name = {it.filename: it for it in items}
    flagged: dict[str, list[str]] = {}
    unknown_sizes: set[str] = set()
    for c in contents:
        it = by_name[c.item]
        rels = [rel for r in it.release_ids if (rel := releases.get(r)) is not None]
        count_cols: set[str] = set()
        small: list[float] = []
        other: list[float] = []
        for rel in rels:
            if not rel.count_columns:
                unknown_sizes.add(rel.release_id)
                continue
            count_cols |= set(rel.count_columns)
            idx = [rel.columns.index(cc) for cc in rel.count_columns]
            keyidx = {rel.columns.index(k) for k in rel.key_columns}
            for r in rel.rows:
                is_small = any(numeric(r[i]) and r[i] < threshold for i in idx)
                vals = [float(v) for j, v in enumerate(r) if j not in keyidx and numeric(v)]
                (small if is_small else other).extend(vals)
        if not small:
            continue
        small_set, other_set = NumberSet(small), NumberSet(other)
        rows: list[str] = []
        for t in c.tables:
            counts = [j for j, col in enumerate(t.columns) if col in count_cols]
            for i, row in enumerate(t.rows):
                direct = any(numeric(row[j]) and row[j] < threshold for j in counts)
                matched = any(numeric(v) and small_set.matches(v) and not other_set.matches(v)
                              for j, v in enumerate(row) if j not in counts)
                if direct or matched:
                    rows.append(f"row {i + 1}")
        if rows:
            flagged[c.item] = rows
    details: dict[str, Any] = {"min_group_count": threshold,
                               "items": {k: {"rows": len(v), "examples": v[:EXAMPLES]}
                                         for k, v in flagged.items()}}
    if unknown_sizes:
        details["group_sizes_not_released"] = sorted(unknown_sizes)
    if flagged:
        n = sum(len(v) for v in flagged.values())
        return RuleResult("small_cells", REVIEW, f"{n} row(s) hold values of groups whose "
                          f"noisy count is below {threshold}: a reviewer will check them",
                          details)
    note = "" if not unknown_sizes else (" (some releases have no count, so their group "
                                         "sizes are unknown)")
    return RuleResult("small_cells", PASS, f"no values of groups below {threshold}{note}",
                      details)


